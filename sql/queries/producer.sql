-- name: count_images
SELECT count(*) FROM (
    SELECT 1 FROM images WHERE (%(group)s::text IS NULL OR image_group = %(group)s)
     LIMIT %(limit)s) AS selected

-- name: stream_images
-- The images to submit, ascending id (read through a server-side cursor: constant memory).
SELECT image_id, image_filename, image_path, image_url
  FROM images
 WHERE (%(group)s::text IS NULL OR image_group = %(group)s)
 ORDER BY image_id
 LIMIT %(limit)s

-- name: answered_pairs
-- Which of these image × service pairs already have a successful answer.
SELECT DISTINCT image_id, service
  FROM results
 WHERE status = 'success' AND image_id = ANY(%(image_ids)s) AND service = ANY(%(services)s)
