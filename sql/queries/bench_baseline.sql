-- The interleaved pipeline benchmark against another commit (windmill.bench.baseline): each side's databases, the
-- run's figures read from the bench images' rows, and the statement count of pg_stat_statements.

-- name: bench_baseline_drop_database
-- {database}: an identifier composed in by psycopg.sql (DROP DATABASE takes no parameters).
DROP DATABASE IF EXISTS {database} WITH (FORCE)

-- name: bench_baseline_create_database
-- {database}: an identifier composed in by psycopg.sql (CREATE DATABASE takes no parameters).
CREATE DATABASE {database}

-- name: bench_baseline_copy_database
-- {database} and {template}: identifiers composed in by psycopg.sql (CREATE DATABASE takes no parameters).
CREATE DATABASE {database} TEMPLATE {template}

-- name: bench_baseline_products
-- The bench images, those with a consensus, their merged boxes, and the consensus jobs run for them (claimed and
-- done: votes, and jobs that found nothing changed or were put off; the same count on either side of a comparison).
SELECT (SELECT count(*) FROM images WHERE image_group = %(group)s),
       (SELECT count(*) FROM consensus c JOIN images i USING (image_id) WHERE i.image_group = %(group)s),
       (SELECT count(*) FROM merged_boxes b JOIN images i USING (image_id) WHERE i.image_group = %(group)s),
       (SELECT count(*) FROM jobs j JOIN images i USING (image_id)
         WHERE i.image_group = %(group)s AND j.queue = 'consensus' AND j.state = 'done' AND j.attempts > 0)

-- name: bench_baseline_jobs_by_queue
-- The jobs run (claimed and done) for the bench images, by queue, the service tasks' queues as one (each named
-- <prefix>queue_<service>, the bench giving its catalog a prefix of its own): how many merges, postprocessing jobs
-- and votes an image cost. Either side's schema has these columns.
SELECT CASE WHEN j.queue LIKE '%%queue\_%%' THEN 'service tasks' ELSE j.queue END AS kind, count(*)
  FROM jobs j JOIN images i USING (image_id)
 WHERE i.image_group = %(group)s AND j.state = 'done' AND j.attempts > 0
 GROUP BY 1 ORDER BY 1

-- name: bench_statements_available
-- Whether the server has pg_stat_statements loaded (shared_preload_libraries).
SELECT 'pg_stat_statements' = ANY(string_to_array(current_setting('shared_preload_libraries'), ', '))

-- name: bench_statements_extension
CREATE EXTENSION IF NOT EXISTS pg_stat_statements

-- name: bench_statements_reset
SELECT pg_stat_statements_reset()

-- name: bench_statements_count
-- Statements the workers sent (top level), not those that triggers and functions ran for them.
SELECT coalesce(sum(calls), 0) FROM pg_stat_statements
 WHERE toplevel AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())

-- name: bench_next_transaction_id
-- The next transaction id PostgreSQL will assign; reading it assigns none. Between two readings: the transactions
-- that wrote, whoever ran them (a read-only transaction gets no id), so with production durability each a commit
-- that waited for the disk.
SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint
