-- Fewer NOTIFYs (issue 13 item 5). Every newly queued job sent one (sql/0002). PostgreSQL folds the notifications
-- of one transaction, but every transaction that notifies takes a database-wide lock at commit to append to the
-- notification queue: under a backlog, when no worker needs waking, the answer writers' commits queued on it.
--
-- Now a job wakes the workers only when its queue goes from "nothing due" to "something due":
--
-- - A job due later (the consensus debounce, the scheduler's tick) sends nothing: a notification now would wake
--   workers that find nothing to claim. The workers' poll (about a second, DESIGN rule 3) claims it once due.
-- - A job queued where another job of the same queue is already due and visible sends nothing: that job is either
--   about to be claimed by a worker that is awake (a busy worker claims again as soon as a job of its batch ends),
--   or held by a transaction that relies on it (sql/0012), and the workers' next poll finds both. So at most one
--   notification per transaction and queue, and none at all while a queue is backed up.
-- - Concurrent transactions that each queue the first job of an empty queue both notify (neither sees the
--   other's uncommitted row): one extra hint, never a missing one.
--
-- NOTIFY stays a hint (DESIGN rule 3): no correctness rests on it. The no-lost-wake-up argument of sql/0012 is
-- about which answers a recompute reads, which notifications never decided. What can change is latency: a job
-- queued behind a due job that a transaction holds waits for the workers' poll instead of a notification.

-- The check reads the queue's first claimable entries (jobs_claimable_idx, sql/0002) and stops at the first due one.
CREATE OR REPLACE FUNCTION notify_job_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM jobs
                    WHERE queue = NEW.queue AND state = 'queued' AND run_after <= now() AND id <> NEW.id) THEN
        PERFORM pg_notify('windmill_jobs', '');
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER jobs_notify_queued AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.state = 'queued' AND NEW.run_after <= now()) EXECUTE FUNCTION notify_job_queued();
