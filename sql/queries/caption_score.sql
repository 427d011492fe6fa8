-- name: latest_caption
-- The latest successful answer of a caption service for the image, with the image's location.
SELECT r.result_id, r.data, i.image_path, i.image_url
  FROM results r
  JOIN images i ON i.image_id = r.image_id
 WHERE r.result_id = latest_success_id(%(image_id)s, %(service)s)

-- name: store_caption_score
-- A caption source has one score per image: the previous one is replaced, not piled up; and only by the score of
-- the source's latest caption, under the image's caption-score lock (sql/0107: one call, its own transaction).
-- The new row's id; NULL when the caption was superseded.
SELECT store_caption_score(%(image_id)s, %(lock_namespace)s, %(source)s, %(service)s, %(source_result_id)s, %(data)s,
                           %(status)s, %(error_message)s, %(processing_time)s, %(worker_id)s)
