-- name: consensus_results
-- Every successful answer of the image (the vote keeps the latest per service).
SELECT result_id, service, status, data, processing_time, result_created
  FROM results
 WHERE image_id = %(image_id)s AND status = 'success'
 ORDER BY result_id

-- name: consensus_boxes
SELECT merged_id, merged_data FROM merged_boxes WHERE image_id = %(image_id)s ORDER BY merged_id

-- name: consensus_postprocessing
-- Face and pose answers on the image's boxes: evidence that a person box holds a person.
SELECT postprocessing_id, merged_box_id, service, status, data
  FROM postprocessing
 WHERE image_id = %(image_id)s AND service IN ('face', 'pose')
 ORDER BY postprocessing_id

-- name: store_consensus
-- One row per image, replaced by every recompute.
INSERT INTO consensus (image_id, consensus_data, processing_time, worker_id)
VALUES (%(image_id)s, %(consensus_data)s, %(processing_time)s, %(worker_id)s)
ON CONFLICT (image_id) DO UPDATE
   SET consensus_data = EXCLUDED.consensus_data, processing_time = EXCLUDED.processing_time,
       worker_id = EXCLUDED.worker_id, consensus_created = now()
