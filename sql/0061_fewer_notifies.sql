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

-- Once per transaction and queue: the first due job a transaction queues in a queue looks for a due job of another
-- transaction there; the later ones skip the check (a transaction-local setting remembers the queue), so a bulk
-- enqueue of thousands of service tasks checks each queue once. A job due later never calls the function (the
-- trigger's WHEN). Jobs this transaction queued do not count as already due (workers cannot see them before the
-- commit); they are told apart by created_at, which is the transaction's start (now()) for every job queued through
-- the job contract or the bulk enqueue. A job of another transaction that started in the same microsecond is taken
-- for one of ours: one extra notification, never a missing one. The check reads the queue's claimable entries
-- (jobs_claimable_idx, sql/0002) in id order and stops at the first due one of another transaction.
CREATE OR REPLACE FUNCTION notify_job_queued() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    checked text := 'windmill.woke_' || md5(NEW.queue);
BEGIN
    IF current_setting(checked, true) = 'y' THEN
        RETURN NULL;  -- this transaction has already decided for this queue
    END IF;
    PERFORM set_config(checked, 'y', true);
    IF NOT EXISTS (SELECT 1 FROM jobs j
                    WHERE j.queue = NEW.queue AND j.state = 'queued' AND j.run_after <= now()
                      AND j.created_at <> now()) THEN
        PERFORM pg_notify('windmill_jobs', '');
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER jobs_notify_queued AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.state = 'queued' AND NEW.run_after <= now()) EXECUTE FUNCTION notify_job_queued();
