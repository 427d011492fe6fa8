-- name: latest_caption
-- The latest successful answer of a caption service for the image, with the image's location.
SELECT r.result_id, r.data, i.image_path, i.image_url
  FROM results r
  JOIN images i ON i.image_id = r.image_id
 WHERE r.image_id = %(image_id)s AND r.service = %(service)s AND r.status = 'success'
 ORDER BY r.result_created DESC, r.result_id DESC
 LIMIT 1

-- name: replace_caption_score
-- A caption source has one score per image: the previous one is replaced, not piled up.
WITH previous AS (
    DELETE FROM postprocessing WHERE image_id = %(image_id)s AND service = %(service)s AND merged_box_id IS NULL
)
INSERT INTO postprocessing (image_id, service, data, status, error_message, processing_time, worker_id)
VALUES (%(image_id)s, %(service)s, %(data)s, %(status)s, %(error_message)s, %(processing_time)s, %(worker_id)s)
