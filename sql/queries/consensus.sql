-- name: consensus_results
-- Every successful answer of the image (the vote keeps the latest per service).
SELECT result_id, service, status, data, processing_time, result_created
  FROM results
 WHERE image_id = %(image_id)s AND status = 'success'
 ORDER BY result_id

-- name: consensus_boxes
-- The image's boxes with the revision of the box set, in one statement (one snapshot): the revision recorded is
-- that of the boxes counted. One row with merged_id NULL when there is no box.
SELECT coalesce(m.revision, 0) AS revision, mb.merged_id, mb.merged_data
  FROM (SELECT %(image_id)s::bigint AS image_id) AS i
  LEFT JOIN merged_images m ON m.image_id = i.image_id
  LEFT JOIN merged_boxes mb ON mb.image_id = i.image_id
 ORDER BY mb.merged_id

-- name: consensus_postprocessing
-- Face and pose answers on the image's boxes: evidence that a person box holds a person.
SELECT postprocessing_id, merged_box_id, service, status, data
  FROM postprocessing
 WHERE image_id = %(image_id)s AND service IN ('face', 'pose')
 ORDER BY postprocessing_id

-- name: consensus_current
-- Does the image's stored consensus record the rows a vote would read now? The backfill's rule decides
-- (stale_products, sql/0014: the latest success answers, the box revision, the face/pose rows). Read after the
-- image's consensus lock, so a vote that ran meanwhile has committed what it recorded. An image without a
-- successful answer is always voted on (the rule looks only at images with evidence).
SELECT EXISTS (SELECT 1 FROM consensus WHERE image_id = %(image_id)s)
   AND EXISTS (SELECT 1 FROM results WHERE image_id = %(image_id)s AND status = 'success')
   AND NOT EXISTS (SELECT 1 FROM stale_products(%(image_id)s - 1, %(image_id)s) AS stale
                    WHERE stale.queue = 'consensus')

-- name: store_consensus
-- One row per image, replaced by every recompute, with the inputs it was computed from.
INSERT INTO consensus (image_id, consensus_data, processing_time, worker_id, source_result_ids, boxes_revision,
                       postprocessing_ids)
VALUES (%(image_id)s, %(consensus_data)s, %(processing_time)s, %(worker_id)s, %(source_result_ids)s,
        %(boxes_revision)s, %(postprocessing_ids)s)
ON CONFLICT (image_id) DO UPDATE
   SET consensus_data = EXCLUDED.consensus_data, processing_time = EXCLUDED.processing_time,
       worker_id = EXCLUDED.worker_id, consensus_created = now(), source_result_ids = EXCLUDED.source_result_ids,
       boxes_revision = EXCLUDED.boxes_revision, postprocessing_ids = EXCLUDED.postprocessing_ids
