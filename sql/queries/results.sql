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
