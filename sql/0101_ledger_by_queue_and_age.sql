-- The ledger of RabbitMQ tasks in flight read by queue and age: every scheduler tick asks, for each queue RabbitMQ
-- reports empty, which of its entries are older than WINDMILL_LOST_TASK_AFTER_S (those tasks were lost and are sent
-- again, windmill.broker.ledger.resend_lost). Without this index that question reads the whole ledger, which holds
-- every task of a large submit until it is answered: a fast service's queue runs empty while a slow one still has
-- millions of entries.
CREATE INDEX service_tasks_in_flight_queue_age_idx ON service_tasks_in_flight (queue, submitted_at);
