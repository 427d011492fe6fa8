-- pg_cron runs Windmill's periodic pass (a backfill page, then the job retention) inside PostgreSQL every minute:
-- the job `windmill-cli cron install` creates (windmill/cron.py: job windmill-backfill, command
-- CALL windmill.scheduled_pass(), in Windmill's database), scheduled here by a superuser to run as
-- windmill_worker (deploy/roles.sql), which may run the backfill and the retention and nothing more.
-- (`windmill-cli cron install` schedules the same job to run as the login it uses, which must be
-- allowed to create the extension and call cron.schedule_in_database: usually a superuser.)
-- Without pg_cron, run `windmill-cli worker --role scheduler` (or `windmill-cli workers start scheduler`) instead.
--
-- 1. postgresql.conf, then restart PostgreSQL (Debian/Raspberry Pi OS: apt-get install postgresql-15-cron):
--
--        shared_preload_libraries = 'pg_cron'
--        cron.database_name = 'postgres'      # the database pg_cron keeps its jobs in
--        cron.use_background_workers = on     # jobs run in-process: no pg_hba entry or password for windmill_worker
--        max_worker_processes = 16            # room for those background workers (default 8)
--        cron.timezone = 'UTC'
--
-- 2. As a superuser, in cron.database_name, after deploy/roles.sql ran in Windmill's database:
--
--        psql -v ON_ERROR_STOP=1 -d postgres -v windmill_database=windmill -f deploy/pg_cron.sql
--
--    psql variables: windmill_database (default windmill), schedule (default every minute; pg_cron 1.4 schedules
--    by the minute), command (default CALL windmill.scheduled_pass(); with another page size or retention, e.g.
--    -v command="CALL windmill.scheduled_pass(p_page => 5000, p_retention => interval '7200 seconds')", what
--    `windmill-cli cron install` writes for WINDMILL_BACKFILL_PAGE=5000 WINDMILL_JOB_RETENTION_S=7200).
--    Running it again updates the job in place (pg_cron upserts by job name and user).
--    See it and its runs, as a superuser in that database:
--        SELECT jobid, schedule, database, username, active FROM cron.job WHERE jobname = 'windmill-backfill';
--        SELECT status, start_time, return_message FROM cron.job_run_details ORDER BY runid DESC LIMIT 5;
--    (`windmill-cli cron status` lists the jobs of the login it uses: as windmill_worker, this one, which the
--    GRANT at the end lets it see. Where pg_cron keeps its jobs is a superuser's setting: a login that may not
--    read it looks in Windmill's database, then in postgres, pg_cron's default.) Remove it with:
--        SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = 'windmill-backfill';

\if :{?windmill_database}
\else
\set windmill_database windmill
\endif
\if :{?schedule}
\else
\set schedule '* * * * *'
\endif
\if :{?command}
\else
\set command 'CALL windmill.scheduled_pass()'
\endif

CREATE EXTENSION IF NOT EXISTS pg_cron;

SELECT cron.schedule_in_database(
    'windmill-backfill',                  -- windmill.cron.JOB_NAME
    :'schedule',                          -- windmill.cron.DEFAULT_SCHEDULE
    :'command',                           -- windmill.cron.BACKFILL_COMMAND / cron_command()
    :'windmill_database',
    'windmill_worker'
) AS jobid;

-- `windmill-cli cron status` as windmill_worker: pg_cron shows a login the jobs it runs as (row security), once the
-- login may use schema cron.
GRANT USAGE ON SCHEMA cron TO windmill_worker;
