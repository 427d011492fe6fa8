-- Least-privilege PostgreSQL roles for Windmill.
--
--   windmill_owner    owns schema windmill and everything in it: runs `windmill-cli init-db` (migrations) and
--                     the commands that change the collection itself (`images add`, `images remove`).
--   windmill_worker   what workers do and nothing more: read the collection, write answers, merged boxes,
--                     consensus, postprocessing, jobs and its own row in `workers`, run the backfill and delete old
--                     finished jobs (through prune_jobs, not DELETE). It also serves `submit`, `status`,
--                     `backfill`, `jobs` and `cron status`. No DDL, no TRUNCATE, no temporary tables in this
--                     database, nothing outside schema windmill. (PostgreSQL grants every role TEMPORARY on a new
--                     database: revoke it on the server's others, `postgres` included, to keep that out there too.)
--   windmill_monitor  reads: the six monitoring views (psql, Grafana) and, for the dashboard (`windmill-cli web`)
--                     and `export`, the collection and its answers and products (images, results, merged boxes,
--                     consensus, postprocessing) and, for `status`, the RabbitMQ task ledger. Not jobs, workers
--                     or services (only through the views), no writes.
--
-- Run it as a superuser (or, on a managed server, the admin role with CREATEROLE) in Windmill's database, before
-- the first `init-db` (it creates the roles and the schema, owned by windmill_owner) and again after every
-- `init-db` (it grants on what the migrations created; objects not there yet are skipped with a NOTICE).
-- Idempotent, one transaction:
--
--     psql -1 -v ON_ERROR_STOP=1 -d windmill -f deploy/roles.sql
--
-- No password is in this file. Set them in psql with  \password windmill_worker  (and the other two), or from a
-- variable without echoing it:   psql -d windmill -v pw="$WORKER_PASSWORD" <<< "ALTER ROLE windmill_worker PASSWORD :'pw'"
--
-- Every table, view, function and procedure of schema windmill is listed below, with what each role may do on it
-- (an empty entry is a decision too); tests/test_deploy_files.py fails when a migration adds an object this file
-- does not name, and runs each role's statements as that role.

-- The signatures below name Windmill's own types (job_spec): they are found in schema windmill whatever the
-- administrator's search path (an admin named postgres has "$user", public, where they are not).
SET search_path = windmill, public;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'windmill_owner') THEN
        CREATE ROLE windmill_owner LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'windmill_worker') THEN
        CREATE ROLE windmill_worker LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'windmill_monitor') THEN
        CREATE ROLE windmill_monitor LOGIN;
    END IF;
    -- A managed server's admin is no superuser: it must be a member of windmill_owner to hand objects to it.
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT windmill_owner TO %I', current_user);
    END IF;
END $$;

-- The database: everyone may connect, nobody but the owner may create schemas (init-db's CREATE SCHEMA IF NOT
-- EXISTS checks that privilege even when the schema exists), and nobody may create temporary tables.
DO $$
BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO windmill_owner, windmill_worker, windmill_monitor',
                   current_database());
    EXECUTE format('GRANT CREATE ON DATABASE %I TO windmill_owner', current_database());
    -- The same search path the Windmill client sets, for people at psql (`SELECT * FROM live_workers`).
    EXECUTE format('ALTER ROLE windmill_monitor IN DATABASE %I SET search_path = windmill', current_database());
    EXECUTE format('ALTER ROLE windmill_worker IN DATABASE %I SET search_path = windmill, public',
                   current_database());
END $$;

-- Nobody but its owner creates objects in schema public (PostgreSQL 15's default, spelled out for older servers).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

CREATE SCHEMA IF NOT EXISTS windmill AUTHORIZATION windmill_owner;
ALTER SCHEMA windmill OWNER TO windmill_owner;
REVOKE ALL ON SCHEMA windmill FROM PUBLIC;
GRANT USAGE ON SCHEMA windmill TO windmill_worker, windmill_monitor;

-- Objects created before this file ran (init-db run by another user) are handed to windmill_owner, so that it can
-- run the next migrations. Sequences of identity columns follow their tables.
DO $$
DECLARE
    object record;
BEGIN
    FOR object IN
        SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
                              WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END AS kind,
               format('windmill.%I', c.relname) AS name
          FROM pg_class c
         WHERE c.relnamespace = 'windmill'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
           AND c.relowner <> 'windmill_owner'::regrole
           AND NOT (c.relkind = 'S' AND EXISTS (SELECT FROM pg_depend d
                                                 WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))
        UNION ALL
        SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END,
               p.oid::regprocedure::text
          FROM pg_proc p
         WHERE p.pronamespace = 'windmill'::regnamespace AND p.proowner <> 'windmill_owner'::regrole
        UNION ALL
        SELECT 'TYPE', format('windmill.%I', t.typname)
          FROM pg_type t
         WHERE t.typnamespace = 'windmill'::regnamespace
           AND (t.typtype IN ('e', 'd', 'r')
                -- composite types of their own (CREATE TYPE ... AS), not the row types of tables
                OR (t.typtype = 'c' AND EXISTS (SELECT FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind = 'c')))
           AND t.typowner <> 'windmill_owner'::regrole
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO windmill_owner', object.kind, object.name);
    END LOOP;
END $$;

-- Start from nothing, so a privilege withdrawn from this file is withdrawn on the server too.
REVOKE ALL ON ALL TABLES IN SCHEMA windmill FROM PUBLIC, windmill_worker, windmill_monitor;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA windmill FROM PUBLIC, windmill_worker, windmill_monitor;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA windmill FROM PUBLIC, windmill_worker, windmill_monitor;
-- (ALL FUNCTIONS leaves procedures out.)
REVOKE ALL ON ALL PROCEDURES IN SCHEMA windmill FROM PUBLIC, windmill_worker, windmill_monitor;
-- Functions a future migration creates are not executable by everyone either (PostgreSQL's default).
ALTER DEFAULT PRIVILEGES FOR ROLE windmill_owner IN SCHEMA windmill REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

DO $$
DECLARE
    entry record;
    found boolean;
BEGIN
    FOR entry IN SELECT * FROM (VALUES
        -- kind,      object,                         windmill_worker,                  windmill_monitor
        ('TABLE',    'schema_migrations',            'SELECT',                          'SELECT'),  -- is the schema up to date?
        ('TABLE',    'roles_granted',                'SELECT',                          'SELECT'),  -- sql/0129: and granted on?
        ('TABLE',    'services',                     'SELECT, INSERT, UPDATE',          NULL),  -- every worker syncs the catalog at start
        ('TABLE',    'images',                       'SELECT',                          'SELECT'),  -- monitor: `web`, `export`
        ('TABLE',    'results',                      'SELECT, INSERT',                  'SELECT'),  -- service workers
        ('TABLE',    'merged_boxes',                 'SELECT, INSERT, UPDATE, DELETE',  'SELECT'),  -- the merger replaces boxes
        ('TABLE',    'merged_images',                'SELECT, INSERT, UPDATE',          'SELECT'),
        ('TABLE',    'consensus',                    'SELECT, INSERT, UPDATE',          'SELECT'),
        ('TABLE',    'postprocessing',               'SELECT, INSERT, DELETE',          'SELECT'),  -- caption scores are replaced
        -- enqueue, claim, lease, finish; old done/dead jobs are deleted through prune_jobs_batch (no DELETE here)
        ('TABLE',    'jobs',                         'SELECT, INSERT, UPDATE',          NULL),
        ('TABLE',    'backfill_state',               'SELECT, UPDATE',                  NULL),  -- the backfill's position
        ('TABLE',    'workers',                      'SELECT, INSERT, UPDATE',          NULL),  -- presence and heartbeats
        ('TABLE',    'service_tasks_in_flight',      'SELECT, INSERT, UPDATE, DELETE',  'SELECT'),  -- submit's ledger (status reads it), dlq replay, tasks forget
        -- sql/0133: submit's pages not yet confirmed by RabbitMQ (status counts a dead submit's), and who entered
        -- them (the default, as the submitter); the scheduler and `tasks resend` resend a dead submit's pages
        ('TABLE',    'service_tasks_unconfirmed',    'SELECT, INSERT, DELETE',          'SELECT'),
        ('FUNCTION', 'session_started_at()',         'EXECUTE',                         NULL),
        ('FUNCTION', 'submitter_gone(integer, timestamp with time zone)', 'EXECUTE',    'EXECUTE'),
        -- Status's counters (sql/0060): answers append deltas (their trigger runs as the writer), the fold
        -- (SECURITY DEFINER) folds them, `status --recount` rebuilds them as the worker login.
        ('TABLE',    'service_answer_counts',        'SELECT, INSERT, DELETE',          NULL),
        ('TABLE',    'service_answer_count_deltas',  'SELECT, INSERT, DELETE',          NULL),
        ('TABLE',    'service_answer_minutes',       'SELECT, INSERT, DELETE',          NULL),
        -- sql/0121: the postprocessing's counters, kept the same way
        ('TABLE',    'postprocessing_counts',        'SELECT, INSERT, DELETE',          NULL),
        ('TABLE',    'postprocessing_count_deltas',  'SELECT, INSERT, DELETE',          NULL),
        ('VIEW',     'postprocessing_progress',      'SELECT',                          'SELECT'),
        ('VIEW',     'service_progress',             'SELECT',                          'SELECT'),
        ('VIEW',     'queue_depths',                 'SELECT',                          'SELECT'),
        ('VIEW',     'image_completeness',           'SELECT',                          'SELECT'),
        ('VIEW',     'recent_failures',              'SELECT',                          'SELECT'),
        ('VIEW',     'live_workers',                 'SELECT',                          'SELECT'),
        ('VIEW',     'detector_services',            'SELECT',                          'SELECT'),  -- `export --detectors`, `eval`
        ('FUNCTION', 'enqueue_job(text, bigint, jsonb, text, integer, timestamp with time zone)', 'EXECUTE', NULL),
        -- The job contract (sql/0012): triggers, the merger, the scheduler and the backfill call these.
        ('FUNCTION', 'enqueue(job_spec)',            'EXECUTE',                         NULL),
        ('FUNCTION', 'job_pending(job_spec)',        'EXECUTE',                         NULL),
        ('FUNCTION', 'merge_job(bigint)',            'EXECUTE',                         NULL),
        ('FUNCTION', 'consensus_job(bigint)',        'EXECUTE',                         NULL),
        ('FUNCTION', 'caption_score_job(bigint, text)', 'EXECUTE',                      NULL),
        ('FUNCTION', 'postprocess_job(bigint, bigint, text)', 'EXECUTE',                NULL),
        ('FUNCTION', 'postprocess_job(bigint, text)', 'EXECUTE',                        NULL),  -- sql/0115: per image
        ('FUNCTION', 'scheduler_tick_job(interval)', 'EXECUTE',                         NULL),
        ('FUNCTION', 'box_postprocessing(jsonb, text)', 'EXECUTE',                      NULL),
        ('FUNCTION', 'enqueue_merge(bigint)',        'EXECUTE',                         NULL),
        ('FUNCTION', 'enqueue_consensus(bigint)',    'EXECUTE',                         NULL),
        ('FUNCTION', 'enqueue_caption_score(bigint, text)', 'EXECUTE',                  NULL),
        ('FUNCTION', 'enqueue_postprocessing(bigint)', 'EXECUTE',                       NULL),
        ('FUNCTION', 'enqueue_boxes_postprocessing(bigint[])', 'EXECUTE',               NULL),  -- sql/0102: the merger
        ('FUNCTION', 'enqueue_covered(job_spec)',    'EXECUTE',                         NULL),  -- sql/0103: enqueue, triggers
        ('FUNCTION', 'latest_success_id(bigint, text)', 'EXECUTE',                      NULL),  -- caption scores
        -- The periodic pass (sql/0014, 0015): the scheduler role, pg_cron, `backfill` and `jobs prune`.
        ('FUNCTION', 'stale_products(bigint, bigint)', 'EXECUTE',                       NULL),
        ('FUNCTION', 'backfill(integer, integer)',   'EXECUTE',                         NULL),
        ('FUNCTION', 'prune_jobs_batch(interval, boolean, integer)', 'EXECUTE',         NULL),  -- SECURITY DEFINER
        ('PROCEDURE', 'prune_jobs(interval, boolean, integer, integer, bigint)', 'EXECUTE', NULL),
        ('FUNCTION', 'retry_failed_products(integer)', 'EXECUTE',                      NULL),  -- backfill --failed
        ('PROCEDURE', 'scheduled_pass(integer, interval, integer, jsonb, bigint)', 'EXECUTE', NULL),
        ('FUNCTION', 'fold_answer_counts()',         'EXECUTE',                         'EXECUTE'),  -- SECURITY DEFINER; status folds first
        ('FUNCTION', 'recount_answer_counts()',      'EXECUTE',                         NULL),  -- status --recount
        ('FUNCTION', 'recount_service_answer_counts()', 'EXECUTE',                      NULL),  -- sql/0121: inside it
        ('FUNCTION', 'recount_postprocessing_counts()', 'EXECUTE',                      NULL),
        ('FUNCTION', 'fold_service_answer_counts()', NULL,                              NULL),  -- inside the fold (its owner)
        ('FUNCTION', 'fold_postprocessing_counts()', NULL,                              NULL),
        ('FUNCTION', 'postprocessing_counted_service(text)', 'EXECUTE',                 NULL),  -- the trigger, as the writer
        ('FUNCTION', 'answer_counts_lock()',         'EXECUTE',                         NULL),
        ('FUNCTION', 'pair_done(text[])',            'EXECUTE',                         NULL),
        ('FUNCTION', 'pair_failed(text[])',          'EXECUTE',                         NULL),
        ('FUNCTION', 'table_rows(regclass)',         'EXECUTE',                         'EXECUTE'),  -- status's totals
        ('FUNCTION', 'queue_depth_rows()',           'EXECUTE',                         'EXECUTE'),  -- sql/0116: view queue_depths
        ('FUNCTION', 'backlog_exact_cap()',          NULL,                              NULL),  -- sql/0116: inside the two above
        ('FUNCTION', 'backlog_sample_percent(regclass)', NULL,                          NULL),
        ('FUNCTION', 'tasks_in_flight_counts()',     'EXECUTE',                         'EXECUTE'),  -- sql/0116: status' ledger counts
        ('FUNCTION', 'is_person_box(jsonb, text)',   'EXECUTE',                         'EXECUTE'),  -- image_completeness calls it
        ('FUNCTION', 'consensus_delay()',            'EXECUTE',                         NULL),  -- the triggers call it
        -- sql/0104: a consensus vote waits for the image's voter tasks, up to its deadline job
        ('FUNCTION', 'consensus_max_wait()',         'EXECUTE',                         NULL),
        ('FUNCTION', 'merge_delay()',                'EXECUTE',                         NULL),  -- sql/0113
        ('FUNCTION', 'consensus_deadline_job(bigint)', 'EXECUTE',                       NULL),
        ('FUNCTION', 'enqueue_consensus_deadline(bigint)', 'EXECUTE',                   NULL),
        ('FUNCTION', 'consensus_waits_for_voters(bigint, jsonb)', 'EXECUTE',            NULL),
        ('FUNCTION', 'consensus_deadline_queued(bigint)', 'EXECUTE',                    NULL),
        ('FUNCTION', 'drop_consensus_deadline(bigint)', 'EXECUTE',                      NULL),
        -- sql/0105: the triggers' vote gate, and the one rule for the image locks' keys (windmill/locks.py)
        ('FUNCTION', 'image_lock_key(bigint, integer)', 'EXECUTE',                      NULL),
        ('FUNCTION', 'vote_gate_key(bigint)',        'EXECUTE',                         NULL),
        ('FUNCTION', 'voter_tasks_outstanding(bigint, uuid)', 'EXECUTE',                NULL),
        ('FUNCTION', 'queue_vote(bigint, uuid)',     'EXECUTE',                         NULL),
        ('FUNCTION', 'store_caption_score(bigint, integer, text, text, bigint, jsonb, text, text, double precision, text)',
                                                     'EXECUTE',                         NULL),  -- sql/0107
        -- sql/0108: the merge's two statements; render and the chaos audit read the detectors' latest answers too
        ('FUNCTION', 'merge_inputs(bigint, integer)', 'EXECUTE',                        NULL),
        ('FUNCTION', 'store_merge(bigint, text, bigint[], jsonb, jsonb, integer, bigint[])', 'EXECUTE', NULL),
        ('FUNCTION', 'latest_detector_results(bigint)', 'EXECUTE',                      'EXECUTE'),
        -- sql/0109: the vote's lock and read in one call
        ('FUNCTION', 'consensus_inputs(bigint, jsonb)', 'EXECUTE',                     NULL),
        ('FUNCTION', 'lock_and_read_consensus_inputs(bigint, integer, jsonb)', 'EXECUTE', NULL),
        ('FUNCTION', 'store_vote(bigint, jsonb, double precision, text, bigint[], bigint, bigint[], boolean)',
                                                     'EXECUTE',                         NULL),  -- sql/0112
        ('FUNCTION', 'take_service_slot(text, integer, integer[])', 'EXECUTE',          NULL),  -- fleet_max_concurrency
        ('FUNCTION', 'export_selection(bigint, text, timestamp with time zone, bigint)', 'EXECUTE', 'EXECUTE'),  -- `export`
        ('FUNCTION', 'give_back_service_slot(text, integer)',       'EXECUTE',          NULL),
        ('FUNCTION', 'job_channel(text)',            'EXECUTE',                         NULL),  -- sql/0096: the notify trigger
        ('FUNCTION', 'listen_job_queues(text[])',    'EXECUTE',                         NULL),  -- a worker's LISTENs
        -- sql/0098: the notify trigger's look-up, and the claim's `waited`
        ('FUNCTION', 'job_queue_backed_up(text)',    'EXECUTE',                         NULL),
        ('FUNCTION', 'job_backlog_wait()',           'EXECUTE',                         NULL),
        ('FUNCTION', 'job_waited(timestamp with time zone, timestamp with time zone, timestamp with time zone, interval)',
                                                     'EXECUTE',                         NULL),
        -- sql/0126: the claim's (and the backfill's) rule for an expired lease
        ('FUNCTION', 'expired_lease_gives_up(integer, integer, text)', 'EXECUTE',       NULL),
        ('FUNCTION', 'expired_lease_error(text, integer, integer, text)', 'EXECUTE',    NULL),
        ('FUNCTION', 'expired_lease_poisons(integer, integer, text)', 'EXECUTE',        NULL),  -- sql/0131
        ('FUNCTION', 'job_is_poison(integer, integer, text)',        'EXECUTE',         NULL),  -- the claim's poison
        -- sql/0135: the claim's (and the backfill's) rule for a lease granted before the server started
        ('FUNCTION', 'lease_lapsed(timestamp with time zone, timestamp with time zone, timestamp with time zone, interval)', 'EXECUTE', NULL),
        -- Trigger functions: PostgreSQL checks EXECUTE when a trigger is created, not when it fires.
        ('FUNCTION', 'notify_job_queued()',          NULL,                              NULL),
        ('FUNCTION', 'answer_stored()',              NULL,                              NULL),  -- sql/0090
        ('FUNCTION', 'enqueue_consensus_for_image()', NULL,                             NULL),
        ('FUNCTION', 'forget_tasks_of_deleted_image()', NULL,                           NULL),
        ('FUNCTION', 'note_answer_change()',         NULL,                              NULL),
        ('FUNCTION', 'note_postprocessing_change()', NULL,                              NULL),  -- sql/0121
        ('FUNCTION', 'notify_images_registered()',   NULL,                              NULL),  -- submit --follow
        ('TABLE',    'follow_positions',             'SELECT, INSERT, UPDATE',          'SELECT')  -- submit --follow
    ) AS grants (kind, object, worker, monitor)
    LOOP
        IF entry.kind IN ('FUNCTION', 'PROCEDURE') THEN
            BEGIN
                found := to_regprocedure('windmill.' || entry.object) IS NOT NULL;
            EXCEPTION WHEN undefined_object THEN  -- before PostgreSQL 16, an argument type not created yet (job_spec)
                found := false;                   -- is an error rather than NULL: the first run, before init-db
            END;
        ELSE
            found := to_regclass('windmill.' || entry.object) IS NOT NULL;
        END IF;
        IF NOT found THEN
            RAISE NOTICE 'windmill.% does not exist yet: run this file again after `windmill-cli init-db`',
                entry.object;
            CONTINUE;
        END IF;
        IF entry.worker IS NOT NULL THEN
            EXECUTE format('GRANT %s ON %s windmill.%s TO windmill_worker', entry.worker,
                           CASE entry.kind WHEN 'VIEW' THEN 'TABLE' ELSE entry.kind END, entry.object);
        END IF;
        IF entry.monitor IS NOT NULL THEN
            EXECUTE format('GRANT %s ON %s windmill.%s TO windmill_monitor', entry.monitor,
                           CASE entry.kind WHEN 'VIEW' THEN 'TABLE' ELSE entry.kind END, entry.object);
        END IF;
    END LOOP;
END $$;

-- What this run granted on (sql/0129): the schema as of its newest migration, but no further than the newest this
-- file knows the objects of (an older copy of it, run after a newer `init-db`, granted nothing on what came since).
-- A login that depends on these grants refuses a schema migrated further (windmill/db/schema.py) rather than
-- failing each job that touches a new object. tests/test_grants_after_upgrade.py keeps the number equal to sql/'s
-- newest migration: raise it with each migration.
DO $$
BEGIN
    IF to_regclass('windmill.roles_granted') IS NOT NULL THEN
        INSERT INTO windmill.roles_granted (through_migration)
        SELECT least(135, max(version)) FROM windmill.schema_migrations
        ON CONFLICT (one_row) DO UPDATE SET through_migration = EXCLUDED.through_migration, granted_at = now();
    END IF;
END $$;
