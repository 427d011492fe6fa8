-- name: monitor_service_progress
-- Per service an image is sent to: job-table tasks, images answered and failed, successes per minute (view
-- service_progress). The services that see only boxes or captions are monitor_postprocessing_progress's.
SELECT service, category, queued, running, done, failed, rate_1m, rate_1h, last_success_at
  FROM service_progress
 WHERE category NOT IN ('spatial_only', 'postprocessing')
 ORDER BY CASE category WHEN 'primary' THEN 0 ELSE 1 END, service

-- name: monitor_postprocessing_progress
-- Per postprocessing service: job-table tasks, boxes (caption scores: captions) answered and failed, the newest
-- answer (view postprocessing_progress, sql/0121).
SELECT service, queued, running, done, failed, last_answer_at
  FROM postprocessing_progress
 ORDER BY service

-- name: monitor_queue_depths
-- Per job queue: due, scheduled, retrying, running, expired leases, dead, oldest due job (view queue_depths).
SELECT queue, queued, scheduled, retrying, running, expired_leases, dead, oldest_age_s, estimated
  FROM queue_depths
 ORDER BY queue

-- name: monitor_recent_failures
-- The newest failures of the last 24 hours (view recent_failures).
SELECT failed_at, kind, source, image_id, state, attempts, reason
  FROM recent_failures
 LIMIT %(limit)s

-- name: monitor_live_workers
-- Workers that have not stopped, with their last heartbeat (view live_workers).
SELECT worker_id, role, service, hostname, pid, alive, heartbeat_age_s, running_jobs, jobs_done, jobs_failed
  FROM live_workers
 ORDER BY role, worker_id

-- name: monitor_services_down
-- The services live workers find down (their heartbeats' services_down, sql/0132): for how long (the longest any
-- worker has seen, to now), by how many workers, and the last failure one of them met.
SELECT d.key AS service,
       round(max((d.value->>'seconds')::numeric + l.heartbeat_age_s::numeric)) AS down_for_s,
       count(*) AS workers,
       min(d.value->>'reason') AS reason
  FROM live_workers l
 CROSS JOIN LATERAL jsonb_each(l.services_down) AS d
 WHERE l.alive
 GROUP BY d.key
 ORDER BY d.key

-- name: monitor_image
-- One image's completeness (view image_completeness).
SELECT * FROM image_completeness WHERE image_id = %(image_id)s

-- name: monitor_totals
-- Rows of the main tables (counted while small, the planner's estimate beyond 100,000: table_rows, sql/0060) and
-- the database clock (the status' timestamp).
SELECT now() AS collected_at,
       table_rows('images') AS images,
       table_rows('results') AS results,
       table_rows('merged_boxes') AS merged_boxes,
       table_rows('consensus') AS consensus,
       table_rows('postprocessing') AS postprocessing

-- name: fold_answer_counts
-- Fold the answer counters' deltas (sql/0060); how many delta rows were folded.
SELECT fold_answer_counts()

-- name: recount_answer_counts
-- Rebuild the answer counters from every answer (sql/0060); how many services were counted.
SELECT recount_answer_counts()

-- name: monitor_tasks_in_flight
-- Per service: RabbitMQ tasks in submit's ledger (published, not yet answered) and the age of the oldest; past
-- 10,000 a queue's count is estimated (sql/0116).
SELECT service, queue, in_flight, oldest_age_s, estimated
  FROM tasks_in_flight_counts()
 ORDER BY service

-- name: monitor_orphaned_in_flight
-- Of those, the tasks entered by a submit that ended before RabbitMQ confirmed them (sql/0133): the scheduler's next
-- tick publishes them again. Reads only the pages not yet confirmed (one per submit publishing now, and the dead
-- ones'). A login that may not see the submit's session start (windmill_monitor) counts only pages whose pid is gone.
SELECT count(*)
  FROM service_tasks_unconfirmed page
 CROSS JOIN LATERAL unnest(page.task_ids) AS named (task_id)
  JOIN service_tasks_in_flight ledger ON ledger.task_id = named.task_id
 WHERE submitter_gone(page.submitter_pid, page.submitter_started_at)
