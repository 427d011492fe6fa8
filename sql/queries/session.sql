-- name: read_only_snapshot
-- The first statement of a transaction that reads one snapshot (workers keep writing meanwhile).
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY

-- name: bound_statement_time
-- A time limit for the statements of the current transaction (a value such as '500ms').
SELECT set_config('statement_timeout', %(timeout)s, true)

-- name: notification_queue_usage
-- The share (0 to 1) of the server's NOTIFY queue in use: near 1, notifying transactions start failing.
SELECT pg_notification_queue_usage() AS usage

-- name: lock_image_product
-- Serialise recomputes of one product of one image; released at commit (the key: image_lock_key, sql/0105).
SELECT pg_advisory_xact_lock(image_lock_key(%(image_id)s, %(product)s))

-- name: begin_pipelined
-- A transaction opened as a statement of its pipeline (windmill/db/pipelined.py says why).
BEGIN

-- name: commit_pipelined
COMMIT
