-- name: latest_caption
-- The latest successful answer of a caption service for the image, with the image's location.
SELECT r.result_id, r.data, i.image_path, i.image_url
  FROM results r
  JOIN images i ON i.image_id = r.image_id
 WHERE r.result_id = latest_success_id(%(image_id)s, %(service)s)

-- name: store_caption_score
-- A caption source has one score per image: the previous one is replaced, not piled up; and only by the score of
-- the source's latest caption (run under the image's caption-score lock: a slow score of an older caption that
-- finishes last stores nothing). Returns the new row's id, nothing when the caption was superseded.
WITH current_caption AS (
    SELECT 1 WHERE latest_success_id(%(image_id)s, %(source)s) = %(source_result_id)s
), previous AS (
    DELETE FROM postprocessing
     WHERE image_id = %(image_id)s AND service = %(service)s AND merged_box_id IS NULL
       AND EXISTS (SELECT 1 FROM current_caption)
)
INSERT INTO postprocessing (image_id, service, data, status, error_message, processing_time, worker_id,
                            source_result_id)
SELECT %(image_id)s, %(service)s, %(data)s, %(status)s, %(error_message)s, %(processing_time)s, %(worker_id)s,
       %(source_result_id)s
  FROM current_caption
RETURNING postprocessing_id
