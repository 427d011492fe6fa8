-- The migration runner's own bookkeeping (windmill.db.migrations): the schema windmill and its table of
-- applied migrations. The schema's name is written out as the migrations write it (windmill.db.migrations.SCHEMA
-- names it for the connections' search_path; tests/test_sql_home.py keeps the two equal).

-- name: migration_lock
-- Concurrent `init-db` runs take turns instead of racing on CREATE TABLE (any constant key).
SELECT pg_advisory_xact_lock(%(key)s)

-- name: create_migration_schema
CREATE SCHEMA IF NOT EXISTS windmill

-- name: create_migration_table
CREATE TABLE IF NOT EXISTS windmill.schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now())

-- name: migration_table_exists
SELECT to_regclass('windmill.schema_migrations') IS NOT NULL

-- name: applied_migrations
SELECT version FROM windmill.schema_migrations

-- name: migration_search_path
-- A migration creates its objects in schema windmill, whatever the connection's search_path.
SET LOCAL search_path TO windmill

-- name: record_migration
INSERT INTO windmill.schema_migrations (version, name) VALUES (%(version)s, %(name)s)

-- name: migration_lock_timeout
-- How long a migration's statement waits for a table lock before it gives up and the migration is tried again: a
-- DDL statement waiting in a lock's queue holds back every worker that wants that table after it.
SELECT set_config('lock_timeout', %(timeout)s, true)

-- name: lock_holders
-- The oldest transactions holding a lock on one of Windmill's tables or views, as a migration that waited names
-- them (no user, no query text: what an operator needs to find the session). A login that is neither a superuser
-- nor a member of pg_read_all_stats (windmill_owner) sees another login's session without its state or start
-- (NULL): such a holder is still named, by pid and application, after those whose age is known.
SELECT a.pid, coalesce(nullif(a.application_name, ''), '(no application name)') AS application, a.state,
       round(extract(epoch FROM now() - a.xact_start)) AS for_s
  FROM pg_stat_activity a
 WHERE a.pid <> pg_backend_pid()
   AND a.pid IN (SELECT l.pid FROM pg_locks l
                   JOIN pg_class c ON c.oid = l.relation
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = 'windmill' AND l.granted)
 ORDER BY a.xact_start NULLS LAST, a.pid
 LIMIT 3

-- name: login_needs_roles_sql
-- Whether this login depends on deploy/roles.sql's grants (neither a superuser nor a member of the schema's owner),
-- and whether it may read what roles.sql last granted on (it may not when roles.sql has not run since sql/0129).
SELECT current_user::text,
       NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT pg_has_role((SELECT nspowner FROM pg_namespace WHERE nspname = 'windmill'), 'USAGE'),
       has_table_privilege('windmill.roles_granted', 'SELECT')

-- name: roles_granted_through
-- The newest migration deploy/roles.sql granted on when it last ran (no row: it never ran since sql/0129).
SELECT through_migration FROM windmill.roles_granted
