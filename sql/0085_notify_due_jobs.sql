-- The wake-up without 0061's look-up (issue 13 item 5). 0061 notified only when a queue got its first due job: before
-- notifying it looked for a due job of another transaction in the queue. That look-up cost more than the
-- notification it spared. PL/pgSQL keeps one plan for it whatever the queue (a generic plan), and with the queue
-- unknown the planner follows jobs_claimable_order_idx (id) or reads the whole table: it walks the claimable jobs of
-- every other queue. Measured on a job table with 300,000 jobs waiting in another queue: 65 ms per look-up; over the
-- entries a finished backlog leaves in the partial indexes until vacuum, 1–4 ms, so an idle worker's wake-up went
-- from 2.6 to 5.1 ms, and to 79 ms beside a million done jobs.
--
-- Now a job due now notifies; a job due later (the consensus debounce, the scheduler's tick) does not, as in 0061
-- (the trigger's WHEN, unchanged): the workers' poll claims it once due. PostgreSQL folds the identical
-- notifications of one transaction into one (same channel, same payload), so a transaction sends at most one,
-- however many jobs and queues it fills. NOTIFY stays a hint (DESIGN rule 3).
CREATE OR REPLACE FUNCTION notify_job_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('windmill_jobs', '');
    RETURN NULL;
END $$;
