-- PostgreSQL's cost per answer (windmill.bench.answer_cost): each side's database emptied, its images and tasks
-- seeded as submit leaves them, the WAL position, and pg_stat_statements' counts of what the answers ran.

-- name: bench_answer_cost_empty
-- Every row a run leaves (answers, jobs, ledger, counters cascade or are listed), so each run starts alike.
TRUNCATE images, jobs, service_tasks_in_flight, service_answer_count_deltas, service_answer_counts,
         service_answer_minutes CASCADE

-- name: bench_answer_cost_images
-- The run's images, ascending (submit's order).
INSERT INTO images (image_filename, image_path)
SELECT 'a' || n || '.jpg', '/bench/answer_cost/' || n || '.jpg' FROM generate_series(1, %(count)s) AS n
RETURNING image_id

-- name: bench_answer_cost_ledger
-- The RabbitMQ path: each task in the ledger of tasks in flight, as submit enters it before it publishes.
INSERT INTO service_tasks_in_flight (image_id, service, queue, task_id)
SELECT * FROM unnest(%(image_ids)s::bigint[], %(services)s::text[], %(queues)s::text[], %(task_ids)s::uuid[])

-- name: bench_answer_cost_vacuum
VACUUM ANALYZE images, jobs, results, service_tasks_in_flight, service_answer_count_deltas

-- name: bench_answer_cost_wal
-- Where the WAL is now (bytes since its start), to measure what a run wrote.
SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint

-- name: bench_answer_cost_track
-- This session's statements counted by pg_stat_statements ('all': with those triggers and functions run) or not.
SELECT set_config('pg_stat_statements.track', %(track)s, false)

-- name: bench_answer_cost_statements
-- Statements of this database since the last reset: every one (top level and nested), and the heaviest by time.
SELECT toplevel, calls, total_exec_time, rows, left(regexp_replace(query, '\s+', ' ', 'g'), 110) AS query
  FROM pg_stat_statements
 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
 ORDER BY total_exec_time DESC
