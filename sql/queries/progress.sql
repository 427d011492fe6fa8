-- name: progress_totals
-- How far the work on a group's images (all images when the group is NULL) got: images, answer rows, and jobs
-- for them still queued, running or awaiting a retry.
SELECT (SELECT count(*) FROM images i
         WHERE %(group)s::text IS NULL OR i.image_group = %(group)s) AS images,
       (SELECT count(*) FROM results r JOIN images i USING (image_id)
         WHERE %(group)s::text IS NULL OR i.image_group = %(group)s) AS answers,
       (SELECT count(*) FROM jobs j JOIN images i USING (image_id)
         WHERE j.state IN ('queued', 'running', 'failed')
           AND (%(group)s::text IS NULL OR i.image_group = %(group)s)) AS pending_jobs

-- name: pending_jobs
-- Jobs for a group's images (all images when the group is NULL) still queued, running or awaiting a retry.
SELECT count(*) FROM jobs j JOIN images i USING (image_id)
 WHERE j.state IN ('queued', 'running', 'failed')
   AND (%(group)s::text IS NULL OR i.image_group = %(group)s)

-- name: service_outcomes
-- Per service: how many images of the group (all when NULL) have a successful latest answer, how many a failed one.
SELECT service,
       count(*) FILTER (WHERE status = 'success') AS done,
       count(*) FILTER (WHERE status IN ('error', 'timeout')) AS failed
  FROM (SELECT DISTINCT ON (r.image_id, r.service) r.service, r.status
          FROM results r JOIN images i USING (image_id)
         WHERE %(group)s::text IS NULL OR i.image_group = %(group)s
         ORDER BY r.image_id, r.service, r.result_created DESC, r.result_id DESC) AS latest
 GROUP BY service
 ORDER BY service
