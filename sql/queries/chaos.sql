-- name: chaos_answered_pairs
-- Progress of a chaos run: image × service pairs with an answer row.
SELECT count(DISTINCT (image_id, service)) FROM results

-- name: show_setting
SELECT current_setting(%(name)s)

-- name: chaos_answer_problems
-- Image × service pairs (of the given services) without exactly one answer row, or whose row is not final
-- (success, or error/timeout with its reason), or whose failure is Windmill's own rather than the service's
-- (kind 'worker': the database was away, a bug). One row per such pair, with what is wrong.
SELECT p.image_id, p.service,
       CASE WHEN p.answers = 0 THEN 'no answer'
            WHEN p.answers > 1 THEN p.answers || ' answers'
            WHEN p.status NOT IN ('success', 'error', 'timeout') THEN 'left ' || p.status
            WHEN p.reason = '' THEN p.status || ' without a reason'
            ELSE 'failed on our side: ' || p.reason END AS problem
  FROM (SELECT i.image_id, s.name AS service, count(r.result_id) AS answers, min(r.status) AS status,
               min(coalesce(r.error_message, '')) AS reason, min(r.data->'error'->>'kind') AS kind
          FROM images i
         CROSS JOIN unnest(%(services)s::text[]) AS s(name)
          LEFT JOIN results r ON r.image_id = i.image_id AND r.service = s.name
         GROUP BY i.image_id, s.name) AS p
 WHERE p.answers <> 1
    OR p.status NOT IN ('success', 'error', 'timeout')
    OR (p.status <> 'success' AND (p.reason = '' OR p.kind = 'worker'))
 ORDER BY p.image_id, p.service

-- name: chaos_final_answers
-- The latest answer of every pair of the given services, counted by status and the client's error kind.
SELECT status, coalesce(data->'error'->>'kind', ''), count(*)
  FROM (SELECT DISTINCT ON (image_id, service) status, data
          FROM results
         WHERE service = ANY(%(services)s)
         ORDER BY image_id, service, result_created DESC, result_id DESC) AS final
 GROUP BY 1, 2

-- name: chaos_image_boxes
-- An image's stored boxes with what they were computed from.
SELECT crop_key, merged_data, source_result_ids FROM merged_boxes WHERE image_id = %(image_id)s

-- name: chaos_merge_record
-- The answer ids the image's last merge recorded as its inputs (no row: never merged).
SELECT source_result_ids FROM merged_images WHERE image_id = %(image_id)s

-- name: chaos_postprocessing_problems
-- Boxes without a postprocessing row they need (box_postprocessing: colors for every box, face and pose for
-- people, the rule the merger and the backfill follow), rows a box does not need, failed rows without a reason.
WITH needed AS (
    SELECT mb.image_id, mb.merged_id, s.service
      FROM merged_boxes mb
     CROSS JOIN LATERAL unnest(box_postprocessing(mb.merged_data, mb.crop_key)) AS s(service)
), present AS (
    SELECT image_id, merged_box_id AS merged_id, service, status, coalesce(error_message, '') AS reason
      FROM postprocessing
     WHERE merged_box_id IS NOT NULL
)
SELECT coalesce(n.image_id, p.image_id), coalesce(n.merged_id, p.merged_id), coalesce(n.service, p.service),
       CASE WHEN p.merged_id IS NULL THEN 'missing'
            WHEN n.merged_id IS NULL THEN 'not needed'
            ELSE p.status || ' without a reason' END AS problem
  FROM needed n
  FULL JOIN present p ON p.merged_id = n.merged_id AND p.service = n.service
 WHERE p.merged_id IS NULL OR n.merged_id IS NULL OR (p.status IN ('error', 'timeout') AND p.reason = '')
 ORDER BY 1, 2, 3

-- name: chaos_caption_problems
-- Caption scores against the latest answer of each caption source (given): a successful caption needs exactly
-- one score, computed from that caption (a failed score keeps its reason); a source without a successful latest
-- caption needs none.
WITH latest AS (
    SELECT DISTINCT ON (image_id, service) image_id, service, result_id, status
      FROM results
     WHERE service = ANY(%(sources)s)
     ORDER BY image_id, service, result_created DESC, result_id DESC
), scores AS (
    SELECT image_id, substr(service, length('caption_score_') + 1) AS source, count(*) AS rows,
           array_agg(source_result_id) AS captions,
           bool_or(status IN ('error', 'timeout') AND coalesce(error_message, '') = '') AS unexplained
      FROM postprocessing
     WHERE merged_box_id IS NULL AND service LIKE 'caption\_score\_%%'
     GROUP BY 1, 2
)
SELECT coalesce(l.image_id, s.image_id), coalesce(l.service, s.source),
       CASE WHEN s.rows IS NULL THEN 'no score'
            WHEN l.status IS DISTINCT FROM 'success' THEN 'a score without a caption'
            WHEN s.rows > 1 THEN s.rows || ' scores'
            WHEN s.captions <> ARRAY[l.result_id] THEN 'the score of another caption'
            ELSE 'a failed score without a reason' END AS problem
  FROM (SELECT * FROM latest WHERE status = 'success') AS l
  FULL JOIN scores s ON s.image_id = l.image_id AND s.source = l.service
 WHERE s.rows IS NULL OR l.image_id IS NULL OR s.rows > 1 OR s.captions <> ARRAY[l.result_id] OR s.unexplained
 ORDER BY 1, 2

-- name: chaos_job_counts
-- The job table at the end of a run: running, waiting (queued or failed, awaiting a retry; the scheduler's next
-- tick is not work), dead; all jobs, retries, and attempts ended by an expired lease.
SELECT count(*) FILTER (WHERE state = 'running'),
       count(*) FILTER (WHERE state IN ('queued', 'failed') AND queue <> 'scheduler'),
       count(*) FILTER (WHERE state = 'dead'),
       count(*),
       coalesce(sum(attempts - 1) FILTER (WHERE attempts > 1), 0),
       count(*) FILTER (WHERE last_error LIKE 'lease %%expired%%')
  FROM jobs

-- name: chaos_unfinished_jobs
-- A few jobs that are not done, with why.
SELECT id, queue, image_id, state, coalesce(last_error, '')
  FROM jobs
 WHERE state <> 'done' AND NOT (queue = 'scheduler' AND state = 'queued')
 ORDER BY id
 LIMIT %(limit)s

-- name: chaos_tasks_in_flight
-- The ledger of RabbitMQ tasks in flight (sql/0020): each entry should have gone with its task's row.
SELECT image_id, service, task_id::text FROM service_tasks_in_flight ORDER BY image_id, service

-- name: chaos_task_rows
-- The answer rows of the given task ids, with their status (a dead-lettered task must have its row).
SELECT task_id::text, status FROM results WHERE task_id = ANY(%(task_ids)s::uuid[])

-- name: chaos_images
SELECT image_id FROM images ORDER BY image_id

-- name: chaos_answer_rows
-- Answer rows of the given services, retries included (there should be one per pair).
SELECT count(*) FROM results WHERE service = ANY(%(services)s)

-- name: chaos_consensus
SELECT consensus_data FROM consensus WHERE image_id = %(image_id)s

-- name: group_images
-- The images of a group (the benchmarks' own), in id order.
SELECT image_id FROM images WHERE image_group = %(group)s ORDER BY image_id

-- name: chaos_outage_failures
-- Rows that failed for want of a connection to their service (the client's kind `connect`): a worker's calls wait
-- for a service that is down (windmill/farm/outages.py), so the farm's outage, shorter than that wait, leaves none.
SELECT 'answer', image_id, service, error_message
  FROM results
 WHERE status <> 'success' AND data->'error'->>'kind' = 'connect'
UNION ALL
SELECT 'postprocessing', image_id, service, error_message
  FROM postprocessing
 WHERE status <> 'success' AND data->'error'->>'kind' = 'connect'
