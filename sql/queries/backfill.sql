-- name: run_backfill
-- Queue the jobs that repair stale products of the next page of images (sql/0014_backfill_by_content.sql); one
-- row per queue that got jobs.
SELECT queue, queued FROM backfill(%(limit)s, %(page)s)

-- name: scheduled_pass
-- The periodic pass of pg_cron and the scheduler role: one backfill page, then the job retention (sql/0015).
CALL scheduled_pass(p_page => %(page)s, p_retention => %(retention)s)

-- name: prune_jobs
-- Delete old done (and with dead, dead) jobs, a batch per transaction, until none is left.
CALL prune_jobs(p_older_than => %(older_than)s, p_dead => %(dead)s, p_batch => %(batch)s)

-- name: schedule_first_tick
-- A starting scheduler queues a tick to run now, unless a tick already waits or runs under a live lease (a
-- running tick queues its successor itself). The dedupe key settles two schedulers starting at once.
SELECT enqueue(tick)
  FROM scheduler_tick_job(interval '0') AS tick
 WHERE NOT EXISTS (SELECT 1 FROM jobs
                    WHERE jobs.queue = tick.queue AND jobs.dedupe_key = tick.dedupe_key
                      AND (jobs.state = 'queued' OR (jobs.state = 'running' AND jobs.lease_expires_at > now())))

-- name: schedule_next_tick
-- The tick being run queues its successor one interval from now (one attempt: a failed tick is not retried,
-- the next one is already waiting).
SELECT enqueue(scheduler_tick_job(%(interval)s)) AS id

-- name: pg_cron_setup
-- Whether pg_cron is installed on the server, loaded (its settings exist only then), and where it keeps its jobs.
-- cron.database_name is readable by superusers and pg_read_all_settings members only: for another login, asking
-- is an error (in the server's log too, at every `cron status`), so it is asked only when it may be read.
SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_cron') AS installed,
       pg_has_role('pg_read_all_settings', 'USAGE') AS may_read_settings,
       CASE WHEN pg_has_role('pg_read_all_settings', 'USAGE')
            THEN current_setting('cron.database_name', true) END AS cron_database,
       current_database() AS database,
       current_user AS username

-- name: pg_cron_setup_unprivileged
-- The same for a login that may not read cron.database_name (a superuser's setting): whether pg_cron's extension
-- is in this database, which then is where it keeps its jobs.
SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_cron') AS installed,
       EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') AS here,
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
-- The job that runs this database's pass (by whichever user: deploy/pg_cron.sql schedules it as windmill_worker,
-- `cron install` as its own login), else this login's job of that name for another database. pg_cron shows a login
-- only its own jobs unless it is a superuser.
SELECT jobid, jobname, schedule, command, database, username, active
  FROM cron.job
 WHERE jobname = %(job_name)s AND (username = current_user OR database = %(database)s)
 ORDER BY database = %(database)s DESC, username = current_user DESC, jobid
 LIMIT 1

-- name: cron_alter
-- Reschedule another user's job for this database (a superuser may; pg_cron ≥ 1.4 names the database).
SELECT cron.alter_job(%(jobid)s, schedule => %(schedule)s, command => %(command)s, database => %(database)s)

-- name: cron_unschedule
SELECT cron.unschedule(%(jobid)s)

-- name: cron_runs
-- The job's latest runs, newest first.
SELECT runid, status, return_message, start_time, end_time
  FROM cron.job_run_details
 WHERE jobid = %(jobid)s
 ORDER BY runid DESC
 LIMIT %(limit)s

-- name: cron_pass
-- What pg_cron runs: the periodic pass with its defaults (its job has no search_path of ours: schema named).
CALL windmill.scheduled_pass()

-- name: cron_pass_with_settings
-- What pg_cron runs when a deployment changed the page size or the retention: pg_cron has no environment to read
-- them from, and its command takes no parameters, so {page} and {retention} are composed in as literals.
CALL windmill.scheduled_pass(p_page => {page}, p_retention => interval {retention})

-- name: retry_failed_products
-- Postprocessing and caption scores that failed for good, asked again (sql/0120): one row per queue that got jobs.
SELECT queue, queued FROM retry_failed_products(%(limit)s)
