-- Queries of `bench scale`, `bench notify` and `bench queue --history` (windmill/bench/scale.py, notify.py, queue.py).
-- name: bench_scale_new_images
-- `bench scale`: new images to submit, with nothing answered yet.
INSERT INTO images (image_filename, image_path, image_group)
SELECT 'new' || g || '.jpg', %(prefix)s || g || '.jpg', %(group)s
  FROM generate_series(1, %(images)s) AS g

-- name: bench_scale_storage
-- `bench scale`: table and index bytes of each table a history fills, with its rows (the planner's estimate after
-- VACUUM ANALYZE).
SELECT c.relname, pg_table_size(c.oid) AS table_bytes, pg_indexes_size(c.oid) AS index_bytes,
       greatest(c.reltuples, 0)::bigint AS rows
  FROM pg_class c
 WHERE c.relnamespace = 'windmill'::regnamespace AND c.relkind = 'r'
   AND c.relname IN ('images', 'results', 'merged_boxes', 'merged_images', 'postprocessing', 'consensus', 'jobs',
                     'service_answer_counts', 'service_answer_count_deltas')
 ORDER BY c.relname

-- name: bench_scale_storage_total
-- `bench scale`: table and index bytes of every table of the schema.
SELECT coalesce(sum(pg_table_size(c.oid)), 0)::bigint, coalesce(sum(pg_indexes_size(c.oid)), 0)::bigint
  FROM pg_class c
 WHERE c.relnamespace = 'windmill'::regnamespace AND c.relkind = 'r'

-- name: bench_queue_history
-- `bench queue --history N`: the done jobs a busy pipeline leaves, %(jobs)s of them finished evenly over the last
-- two hours (no image: the queue benchmark's jobs have none either), for the retention to prune the older half.
INSERT INTO jobs (queue, payload, state, attempts, created_at, updated_at)
SELECT CASE g %% 3 WHEN 0 THEN 'merge' WHEN 1 THEN 'consensus' ELSE 'postprocess_colors' END, '{}', 'done', 1,
       now() - make_interval(secs => (g %% 7200)::double precision),
       now() - make_interval(secs => (g %% 7200)::double precision)
  FROM generate_series(1, %(jobs)s) AS g

-- name: bench_scale_remove_new_images
-- `bench scale`: the images a submit run added go again, with their jobs (the next run starts from the same history).
WITH gone_jobs AS (
    DELETE FROM jobs WHERE image_id IN (SELECT image_id FROM images WHERE image_group = %(group)s)
)
DELETE FROM images WHERE image_group = %(group)s

-- name: bench_scale_vacuum_after_submit
VACUUM ANALYZE images, jobs, service_tasks_in_flight

-- name: bench_scale_vacuum_history
VACUUM ANALYZE jobs, service_answer_counts

-- name: bench_vacuum_all
VACUUM ANALYZE

-- name: bench_last_image
SELECT max(image_id) FROM images

-- name: bench_done_jobs
SELECT count(*) FROM jobs WHERE state = 'done'

-- name: bench_notify_images
-- `bench notify`: images for the answer writers, one per answer.
INSERT INTO images (image_filename, image_path)
SELECT 'n' || g || '.jpg', '/bench/notify/' || g || '.jpg' FROM generate_series(1, %(images)s) AS g
RETURNING image_id

-- name: bench_notify_backlog
-- `bench notify`: a merge and a consensus job per image, as the answers queue them: the backlog the runs start from.
SELECT count(enqueue_merge(i)) + count(enqueue_consensus(i)) FROM unnest(%(images)s::bigint[]) AS i

-- name: bench_vacuum_images
VACUUM ANALYZE images

-- name: bench_checkpoint
CHECKPOINT

-- name: bench_notify_function_as_migrated
SELECT pg_get_functiondef('notify_job_queued'::regproc)

-- name: bench_notify_trigger_as_migrated
SELECT replace(pg_get_triggerdef(oid), 'CREATE TRIGGER', 'CREATE OR REPLACE TRIGGER')
  FROM pg_trigger WHERE tgname = 'jobs_notify_queued'

-- name: bench_notify_every_job_function
-- The wake-up as sql/0002 had it (a notification for every newly queued job), for `bench notify`'s comparison on
-- its throwaway cluster only.
CREATE OR REPLACE FUNCTION notify_job_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('windmill_jobs', '');
    RETURN NULL;
END $$

-- name: bench_notify_every_job_trigger
CREATE OR REPLACE TRIGGER jobs_notify_queued AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.state = 'queued') EXECUTE FUNCTION notify_job_queued()

-- name: bench_notify_every_due_job_function
-- The wake-up as sql/0096 had it (a notification on its queue's channel for every job due now), for `bench notify`'s
-- comparison on its throwaway cluster only.
CREATE OR REPLACE FUNCTION notify_job_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(job_channel(NEW.queue), '');
    RETURN NULL;
END $$

-- name: bench_notify_every_due_job_trigger
CREATE OR REPLACE TRIGGER jobs_notify_queued AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.state = 'queued' AND NEW.run_after <= now()) EXECUTE FUNCTION notify_job_queued()

-- name: bench_notify_disable
ALTER TABLE jobs DISABLE TRIGGER jobs_notify_queued

-- name: bench_notify_enable
ALTER TABLE jobs ENABLE TRIGGER jobs_notify_queued

-- name: bench_scale_backlog_add
-- bench scale --backlog: the first %(images)s images of the history waiting for the 11 primary services twice over,
-- as jobs queued in the job table and as entries of submit's ledger (both brokers' backlogs at once), loaded behind
-- the triggers' back.
WITH waiting AS (
    SELECT i.image_id, s.name AS service, gen_random_uuid() AS task_id
      FROM (SELECT image_id FROM images ORDER BY image_id LIMIT %(images)s) i
     CROSS JOIN services s WHERE s.category = 'primary'),
queued AS (
    INSERT INTO jobs (queue, image_id, payload)
    SELECT 'queue_' || w.service, w.image_id,
           jsonb_build_object('task_id', w.task_id, 'image_id', w.image_id, 'service_name', w.service)
      FROM waiting w)
INSERT INTO service_tasks_in_flight (image_id, service, queue, task_id)
SELECT w.image_id, w.service, 'queue_' || w.service, gen_random_uuid() FROM waiting w

-- name: bench_scale_backlog_every_task
-- What status read of a backlog before sql/0116: every waiting job and ledger entry, counted.
SELECT (SELECT count(*) FROM (SELECT queue, count(*) FROM jobs WHERE state IN ('queued', 'failed') GROUP BY queue) j),
       (SELECT count(*) FROM (SELECT queue, count(*) FROM service_tasks_in_flight GROUP BY queue) t)

-- name: bench_scale_backlog_remove
-- The backlog gone again (service tasks are the only jobs with a task id in the history's retention).
WITH gone AS (DELETE FROM jobs WHERE state = 'queued' AND payload ? 'task_id' RETURNING 1)
DELETE FROM service_tasks_in_flight
