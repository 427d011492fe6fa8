-- name: register_worker
-- A worker announces itself at start (a restarted worker with the same id starts a new life). Returns who held the
-- row before, when that one was alive (not stopped, a heartbeat within live_workers' 30 s) and is another process:
-- a twin of the same id, or this host's worker that died a moment ago (windmill.worker.presence tells which).
WITH before AS (
    SELECT hostname, pid, extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age_s
      FROM workers
     WHERE worker_id = %(worker_id)s AND stopped_at IS NULL AND heartbeat_at > now() - interval '30 seconds'
       AND (hostname, pid) IS DISTINCT FROM (%(hostname)s, %(pid)s)),
registered AS (
    INSERT INTO workers (worker_id, role, service, hostname, pid)
    VALUES (%(worker_id)s, %(role)s, %(service)s, %(hostname)s, %(pid)s)
    ON CONFLICT (worker_id) DO UPDATE
       SET role = EXCLUDED.role, service = EXCLUDED.service, hostname = EXCLUDED.hostname, pid = EXCLUDED.pid,
           started_at = now(), heartbeat_at = now(), stopped_at = NULL, jobs_done = 0, jobs_failed = 0)
SELECT hostname, pid, heartbeat_age_s FROM before

-- name: worker_heartbeat
-- A beat says this process is alive, whatever a twin of the same id (started by mistake, now gone) left in the row.
-- In the same round trip: the migrations newer than this process knows (a newer Windmill's `init-db` ran meanwhile).
WITH beat AS (
    UPDATE workers
       SET heartbeat_at = now(), jobs_done = %(jobs_done)s, jobs_failed = %(jobs_failed)s, stopped_at = NULL,
           pid = %(pid)s, hostname = %(hostname)s, services_down = %(services_down)s
     WHERE worker_id = %(worker_id)s)
SELECT coalesce(array_agg(version ORDER BY version), '{}') FROM schema_migrations WHERE version > %(newest_known)s

-- name: migrations_newer_than
-- The migrations a process does not have (sql/ of a newer Windmill), for a stream's SchemaWatch.
SELECT coalesce(array_agg(version ORDER BY version), '{}') FROM schema_migrations WHERE version > %(newest_known)s

-- name: worker_stopped
-- Only the row's own process marks it stopped: a twin of the same id that leaves does not stop the one still there.
UPDATE workers SET stopped_at = now(), heartbeat_at = now(), jobs_done = %(jobs_done)s,
       jobs_failed = %(jobs_failed)s
 WHERE worker_id = %(worker_id)s AND pid = %(pid)s AND hostname = %(hostname)s

-- name: work_pending
-- Whether a job (of the given queues, NULL for all) waits, runs or awaits a retry. The scheduler's next tick
-- always waits: it is not work.
SELECT EXISTS (SELECT 1 FROM jobs
                WHERE state IN ('queued', 'running', 'failed') AND queue <> 'scheduler'
                  AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s)))
