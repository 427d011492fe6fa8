-- name: task_result_exists
-- Has this task already written its result? (a redelivered task then does nothing)
SELECT EXISTS (SELECT 1 FROM results WHERE task_id = %(task_id)s)

-- name: insert_result
-- Store one service answer; a second write of the same task is a no-op. The INSERT fires the triggers
-- that enqueue merge and consensus.
INSERT INTO results (image_id, service, task_id, data, status, error_message, processing_time, worker_id)
VALUES (%(image_id)s, %(service)s, %(task_id)s, %(data)s, %(status)s, %(error_message)s, %(processing_time)s,
        %(worker_id)s)
ON CONFLICT (task_id) DO NOTHING
RETURNING result_id

-- name: insert_results
-- Store a group of service answers in one statement, so one transaction and one commit (windmill/roles/answers.py):
-- inserted in the order given (that order is the order of the locks their triggers take), a task already answered
-- skipped. Returns the task and result of each row written.
-- The arrays go as binary parameters (%(x)b): in text, psycopg quotes and backslash-escapes every element with a
-- regular expression, which for the JSON documents (a backslash before each of their quotes) was a tenth of a service
-- worker's CPU. Binary elements are sent as they are; what is stored is the same (tests/test_answer_groups.py).
INSERT INTO results (image_id, service, task_id, data, status, error_message, processing_time, worker_id)
SELECT image_id, service, task_id, data, status, error_message, processing_time, worker_id
  FROM unnest(%(image_ids)b::bigint[], %(services)b::text[], %(task_ids)b::uuid[], %(data)b::jsonb[],
              %(statuses)b::text[], %(error_messages)b::text[], %(processing_times)b::double precision[],
              %(worker_ids)b::text[])
       WITH ORDINALITY AS answer (image_id, service, task_id, data, status, error_message, processing_time,
                                  worker_id, position)
 ORDER BY position
ON CONFLICT (task_id) DO NOTHING
RETURNING task_id, result_id

-- name: current_image_path
-- The path an image has now: a file renamed inside a watched folder since its task was queued (the task carries the
-- path of then). No row: the image was removed.
SELECT image_path FROM images WHERE image_id = %(image_id)s
