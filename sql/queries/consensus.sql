-- name: consensus_inputs
-- Everything a vote needs, in one statement (sql/0109 consensus_inputs: the rows and their order).
SELECT * FROM consensus_inputs(%(image_id)s, %(payload)s)

-- name: lock_and_read_consensus_inputs
-- The image's consensus lock, then consensus_inputs on a snapshot taken after the lock was granted (sql/0109).
SELECT * FROM lock_and_read_consensus_inputs(%(image_id)s, %(lock_namespace)s, %(payload)s)

-- name: drop_consensus_deadline
-- The vote was not put off: the image's deadline job is not needed (sql/0104).
SELECT drop_consensus_deadline(%(image_id)s)

-- name: enqueue_consensus_deadline
-- The vote put off: make sure the image's deadline job is waiting (sql/0104); one already waiting keeps its time.
SELECT enqueue_consensus_deadline(%(image_id)s)

-- name: store_vote
-- The consensus stored (one row per image, replaced by every recompute, with the inputs it was computed from) and,
-- when asked, the image's deadline job dropped first: sql/0112.
SELECT store_vote(%(image_id)s, %(consensus_data)s, %(processing_time)s, %(worker_id)s, %(source_result_ids)s,
                  %(boxes_revision)s, %(postprocessing_ids)s, %(drop_deadline)s)

-- name: consensus_delay_s
-- How long after it is queued a consensus job falls due (sql/0010's debounce), in seconds: the consensus worker
-- claims that long after a notification of its queue (sql/0118).
SELECT extract(epoch FROM consensus_delay())::float8
