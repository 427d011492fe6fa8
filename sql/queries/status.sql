-- name: results_by_service
-- Answers per service and status.
SELECT service, status, count(*) AS results, round(avg(processing_time)::numeric, 3) AS avg_s
  FROM results
 GROUP BY service, status
 ORDER BY service, status

-- name: live_workers
-- Workers that have not stopped, with the age of their last heartbeat.
SELECT worker_id, role, service, hostname, pid, jobs_done, jobs_failed,
       round(extract(epoch FROM now() - heartbeat_at)::numeric, 1) AS heartbeat_age_s
  FROM workers
 WHERE stopped_at IS NULL
 ORDER BY role, worker_id

-- name: totals
SELECT (SELECT count(*) FROM images) AS images,
       (SELECT count(*) FROM results) AS results,
       (SELECT count(*) FROM merged_boxes) AS merged_boxes,
       (SELECT count(*) FROM consensus) AS consensus,
       (SELECT count(*) FROM postprocessing) AS postprocessing
