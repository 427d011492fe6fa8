-- Fewer NOTIFYs, again (issue 13 item 5). Since sql/0085 every job due now notifies its queue's channel. Every
-- notifying commit takes a database-wide lock (the notification queue), so 16 answer writers lost 37 % of their
-- commit rate to it (`bench notify`), and nearly all of those notifications woke nobody: they were sent while the
-- queue was backed up and its workers busy. sql/0061 stayed silent then, but its look-up (static SQL in PL/pgSQL)
-- ran one generic plan for every queue and walked the claimable jobs of the other queues: 65 ms beside 300,000
-- jobs waiting elsewhere. This brings the silence back with a look-up of constant cost.
--
-- The rule. A job due now stays silent when its queue is evidently backed up: among the first few claimable jobs
-- of the queue (jobs_claimable_idx (queue, id), oldest first) there is one that was due when it was queued (so
-- its own insert ran this wake-up: run_after <= created_at) and has waited unclaimed for at least
-- job_backlog_wait() (50 ms). Otherwise it notifies, as before. An idle worker takes a job within a wake-up
-- (about 4 ms); a job left waiting ten times that long says every worker of the queue is busy, and a busy
-- worker claims again as its handlers finish, finding this job in id order behind that one. Not counted:
--   - a job that became due later (a debounced consensus job, a retry after its backoff, a job requeued by
--     `jobs retry` or the backfill): nobody was notified for it, so its waiting proves nothing about the workers;
--   - this transaction's own jobs (created_at = now(), never 50 ms before now()); jobs of transactions not yet
--     committed are invisible. A transaction that began long ago judges by its own start (now()): it finds
--     other jobs younger than they are and notifies more, never less.
-- A job due later still sends nothing (the trigger's WHEN, unchanged since sql/0085).
--
-- The lost wake-up, and what bounds it. The trigger counted on job C; before our transaction commits, a worker
-- claims C with a snapshot that cannot see our job J, its claim comes back short, and its lane waits for a
-- notification (none comes: we stayed silent) or its poll (about 1 s). The worker closes this: a claim returns,
-- per job, whether it had waited at least half of job_backlog_wait() (sql/queries/jobs.sql, claim_jobs), and a
-- lane that took such a job claims once more recheck_after_s (50 ms) after its next short claim
-- (windmill/worker/runtime.py). The claim that took C is that short claim or comes before it, so J, committed
-- within 50 ms of its trigger (an answer's transaction commits within milliseconds), is claimed at that recheck
-- at the latest. Half the wait on the worker's side because the claim's clock (its statement's start) may be a
-- claim's duration behind the clock our trigger judged by. Only lanes that took a job of a backed-up queue
-- recheck, so an idle pipeline runs no extra claims. What remains bounded by the poll only, as any job is:
--   - a transaction that commits more than 50 ms after queueing J (a long handler queueing work early);
--   - J queued behind a job C that no worker took although one was idle: C skipped while an answer held it
--     (sql/0012: it waits for the poll) or its notification lost to a reconnect. J waits for the same poll as C;
--   - the worker that took C is busy to its last thread: J waits for its next free place or another worker's poll.
-- NOTIFY stays a hint (DESIGN rule 3): no correctness rests on it, only latency.
--
-- The look-up's cost. It reads the head of the queue in jobs_claimable_idx (queue, id) (its WHERE repeats the
-- index's predicate, state IN ('queued', 'failed')), at most four live entries (and, like the claim, the entries
-- of claimed jobs that vacuum has not removed yet): done jobs are not in that index, other queues' entries are
-- never read. What makes that plan certain is the form: the queue is matched as a range
-- (queue >= $1 AND queue <= $1) and the order is (queue, id), an order only jobs_claimable_idx yields. With
-- `queue = $1 ORDER BY id`, the planner drops the constant queue from the order, and jobs_claimable_order_idx (id)
-- filtered by queue looks as cheap whenever the statistics take the queue's done jobs for claimable ones (they
-- judge queue and state apart): beside 300,000 jobs waiting in a service queue and 100,000 done merge jobs, even
-- the plan made for the value 'merge' took that path and walked all 300,000 entries (20 ms). In the range form the
-- plan made for a value and the generic plan (one for every queue, which PL/pgSQL caches after five calls, and
-- whose absence of a value misled sql/0061) are the same index scan, so the statement is planned once per session
-- rather than per call (measured in the backend, per one-job transaction beside 300,000 waiting and 1,000,000 done
-- jobs: the trigger as here 40-70 us of CPU more than no trigger; with EXECUTE ... USING, planning each time,
-- 150-210 us more; sql/0096's bare NOTIFY 6-10 us, its cost being the commit lock, not CPU). tests/test_wake_up.py
-- asserts both plans beside that backlog and on an empty table. The look-up runs once per transaction and queue: a transaction-local setting remembers the queue decided
-- (its later jobs there are covered by the same decision, and a second notification of a channel in one
-- transaction would be folded into the first anyway), so a bulk enqueue of thousands of tasks decides each queue
-- once.

-- How long a job due when queued waits unclaimed before its queue counts as backed up (see above).
CREATE FUNCTION job_backlog_wait() RETURNS interval LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT interval '50 milliseconds'
$$;

-- A job that was due when it was queued (its insert ran the wake-up) and, at p_at, has waited at least p_wait.
-- The trigger asks it with job_backlog_wait(), the claim with half of it. STABLE, as timestamptz - interval is:
-- labelled IMMUTABLE it would not be inlined, and each row would run it as a query of its own.
CREATE FUNCTION job_waited(p_run_after timestamptz, p_created_at timestamptz, p_at timestamptz, p_wait interval)
RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT p_run_after <= p_created_at AND p_created_at <= p_at - p_wait
$$;

-- Whether a queue is backed up, by the look-up above. PL/pgSQL, not SQL: its plan is kept for the session (a SQL
-- function's body would be planned again in every transaction). Without a sort, the order (queue, id) comes only
-- from jobs_claimable_idx: enable_sort off forbids the plans that read more than the head of the queue (a scan of
-- the table or of the queue's entries, then a sort), which an almost empty table invites (they cost nothing there,
-- and a plan kept from then would read the whole queue, or table, once it has grown).
CREATE FUNCTION job_queue_backed_up(p_queue text) RETURNS boolean LANGUAGE plpgsql STABLE SET enable_sort = off AS $$
BEGIN
    RETURN (SELECT coalesce(bool_or(job_waited(head.run_after, head.created_at, now(), job_backlog_wait())), false)
              FROM (SELECT run_after, created_at FROM jobs
                     WHERE queue >= p_queue AND queue <= p_queue AND state IN ('queued', 'failed')
                     ORDER BY queue, id LIMIT 4) AS head);
END $$;

CREATE OR REPLACE FUNCTION notify_job_queued() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    decided text := 'windmill.wake_' || md5(NEW.queue);  -- a setting's name: the queue's own could be any text
BEGIN
    IF current_setting(decided, true) = 'y' THEN
        RETURN NULL;  -- this transaction has decided for this queue already
    END IF;
    PERFORM set_config(decided, 'y', true);
    IF NOT job_queue_backed_up(NEW.queue) THEN
        PERFORM pg_notify(job_channel(NEW.queue), '');
    END IF;
    RETURN NULL;
END $$;
