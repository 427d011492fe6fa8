-- The embedded PostgreSQL cluster's own database (windmill.db.embedded.cluster), made once.

-- name: database_exists
SELECT 1 FROM pg_database WHERE datname = %(name)s

-- name: create_embedded_database
-- {database} and {owner}: identifiers composed in by psycopg.sql (CREATE DATABASE takes no parameters).
CREATE DATABASE {database} OWNER {owner}
