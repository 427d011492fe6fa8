-- A RabbitMQ task whose handling kills its worker process (a decoder's segfault, the OOM killer) was redelivered for
-- ever: a delivery lost with its connection is not an attempt (nothing failed that the worker saw), and with a
-- keeper or systemd restarting the worker, the task killed it again each time; a classic queue requeues it at its
-- head, so its lane did nothing else. The count of the task's deaths must outlive the worker, so it lives here, in
-- the task's entry of the ledger of tasks in flight (sql/0020), which its final row removes with it.
--
-- Nothing is written for a first delivery (the hot path). A redelivered one (windmill/broker/poison.py) marks its
-- entry as running when its handler starts (running_since) and unmarks it when the handler hands the task on
-- without a final row (a retry, a task given back); a start that finds the mark of a delivery that never finished
-- counts that one as dead. So only a delivery that died while it ran counts: not one that waited in the worker's
-- prefetch, nor the first delivery of any task, nor one its live worker gave back.
ALTER TABLE service_tasks_in_flight
    ADD COLUMN deaths integer NOT NULL DEFAULT 0,
    ADD COLUMN running_since timestamptz;
COMMENT ON COLUMN service_tasks_in_flight.deaths IS
    'Deliveries of the task that died while their handler ran (a worker killed, its connection lost): counted by '
    'the next delivery that starts; at the task''s attempts it is recorded as a poison input instead of run.';
COMMENT ON COLUMN service_tasks_in_flight.running_since IS
    'When a redelivered delivery of the task started running; NULL once it handed the task on. Found set by the '
    'next start: that delivery died while it ran.';
