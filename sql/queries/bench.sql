-- Statements the benchmarks share (windmill.bench): their rows live in an image group or queues of their own.

-- name: bench_remove_group
-- An image group's images with their answers, products and the jobs they caused (all cascade).
DELETE FROM images WHERE image_group = %(group)s

-- name: bench_remove_bench_queues
-- The jobs of the benchmarks' own queues (named bench_…).
DELETE FROM jobs WHERE queue LIKE 'bench\_%%'

-- name: bench_remove_queue
DELETE FROM jobs WHERE queue = %(queue)s

-- name: bench_group_size
SELECT count(*) FROM images WHERE image_group = %(group)s

-- name: bench_without_triggers
-- A bulk load behind the triggers' back, for the rest of the transaction (a superuser's right).
SET LOCAL session_replication_role = replica

-- name: bench_add_images
-- Images of a group, named bench_1.jpg…, under a path of the run's own.
INSERT INTO images (image_filename, image_path, image_group)
SELECT format('bench_%%s.jpg', n), format('/bench/%%s/bench_%%s.jpg', %(run)s::text, n), %(group)s
  FROM generate_series(1, %(count)s) AS n

-- name: bench_forget_tasks_in_flight
-- The submit ledger's rows of a group's images (their messages were deleted with the bench queues).
DELETE FROM service_tasks_in_flight WHERE image_id IN (SELECT image_id FROM images WHERE image_group = %(group)s)

-- name: bench_answer_progress
-- How many answers the group's images hold, and the seconds from the first one's commit to the last one's.
SELECT count(*), extract(epoch FROM max(result_created) - min(result_created))
  FROM results r JOIN images i USING (image_id)
 WHERE i.image_group = %(group)s

-- name: bench_queue_jobs
-- No-op jobs for the job-queue benchmark.
INSERT INTO jobs (queue, payload) SELECT %(queue)s, '{}' FROM generate_series(1, %(count)s)

-- name: bench_vacuum_jobs
VACUUM ANALYZE jobs

-- name: bench_first_waiting_job
-- The oldest waiting job of a queue (follows a partial index: watching costs next to nothing).
SELECT min(id) FROM jobs WHERE queue = %(queue)s AND state IN ('queued', 'failed')

-- name: bench_queue_unfinished
-- Whether a job of the queue waits or runs (each probe follows a partial index).
SELECT EXISTS (SELECT 1 FROM jobs WHERE queue = %(queue)s AND state IN ('queued', 'failed'))
    OR EXISTS (SELECT 1 FROM jobs WHERE queue = %(queue)s AND state = 'running')

-- name: bench_enqueue_empty_job
SELECT enqueue_job(%(queue)s, NULL, '{}', NULL)

-- name: bench_add_image
INSERT INTO images (image_filename, image_path, image_group) VALUES (%(filename)s, %(path)s, %(group)s)
RETURNING image_id

-- name: bench_add_answer
INSERT INTO results (image_id, service, task_id, data, status) VALUES (%(image_id)s, %(service)s, %(task_id)s,
                                                                      %(data)s, 'success')
RETURNING result_id

-- name: bench_merged_from
-- Whether the image's boxes were merged from this answer yet.
SELECT EXISTS (SELECT 1 FROM merged_images WHERE image_id = %(image_id)s AND %(result_id)s = ANY(source_result_ids))

-- name: bench_vacuum_history
VACUUM ANALYZE images, results, merged_boxes, merged_images, postprocessing, consensus, jobs

-- name: bench_image_count
SELECT count(*) FROM images

-- name: bench_backend_pid
-- The process serving this connection (its parent is the postmaster, when the server runs on this machine).
SELECT pg_backend_pid()

-- name: bench_add_forget_images
-- bench add, between runs, in its throwaway cluster only: every image and what hangs off it, gone at once.
TRUNCATE images CASCADE
