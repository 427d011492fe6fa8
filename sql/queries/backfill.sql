-- name: run_backfill
-- Queue the jobs that repair missing or stale products (sql/0008_backfill.sql); one row per queue that got jobs.
SELECT queue, queued FROM backfill(%(limit)s)

-- name: schedule_first_tick
-- A starting scheduler queues a tick to run now, unless a tick already waits or runs under a live lease (a
-- running tick queues its successor itself). The dedupe key settles two schedulers starting at once.
SELECT enqueue_job(%(queue)s, NULL, '{}'::jsonb, %(dedupe_key)s, 1, now()) AS id
 WHERE NOT EXISTS (SELECT 1 FROM jobs
                    WHERE queue = %(queue)s AND dedupe_key = %(dedupe_key)s
                      AND (state = 'queued' OR (state = 'running' AND lease_expires_at > now())))

-- name: schedule_next_tick
-- The tick being run queues its successor one interval from now (one attempt: a failed tick is not retried,
-- the next one is already waiting).
SELECT enqueue_job(%(queue)s, NULL, '{}'::jsonb, %(dedupe_key)s, 1, now() + %(interval)s) AS id

-- name: pg_cron_setup
-- Whether pg_cron is installed on the server, loaded (its settings exist only then), and where it keeps its jobs.
SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_cron') AS installed,
       current_setting('cron.database_name', true) AS cron_database,
       current_database() AS database,
       current_user AS username

-- name: pg_cron_version
SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'

-- name: create_pg_cron
CREATE EXTENSION IF NOT EXISTS pg_cron

-- name: cron_schedule
-- Create or update (pg_cron upserts by job name and user) the job that runs the backfill in our database.
SELECT cron.schedule_in_database(%(job_name)s, %(schedule)s, %(command)s, %(database)s) AS jobid

-- name: cron_job
SELECT jobid, jobname, schedule, command, database, username, active
  FROM cron.job
 WHERE jobname = %(job_name)s AND username = current_user

-- name: cron_unschedule
SELECT cron.unschedule(%(jobid)s)

-- name: cron_runs
-- The job's latest runs, newest first.
SELECT runid, status, return_message, start_time, end_time
  FROM cron.job_run_details
 WHERE jobid = %(jobid)s
 ORDER BY runid DESC
 LIMIT %(limit)s
