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
