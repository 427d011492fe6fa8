-- name: latest_detector_results
-- The latest successful answer of every detector for one image.
SELECT DISTINCT ON (r.service) r.result_id, r.service, r.data
  FROM results r
  JOIN services s ON s.name = r.service
 WHERE r.image_id = %(image_id)s AND r.status = 'success' AND s.is_detector
 ORDER BY r.service, r.result_created DESC, r.result_id DESC

-- name: image_boxes
SELECT merged_id, crop_key, merged_data FROM merged_boxes WHERE image_id = %(image_id)s

-- name: delete_boxes
-- Boxes gone from the recomputed set; their postprocessing rows go with them (ON DELETE CASCADE).
DELETE FROM merged_boxes WHERE merged_id = ANY(%(merged_ids)s)

-- name: update_boxes
-- Boxes seen again keep their rows (and their postprocessing); their position and agreement are refreshed. One
-- statement for all of them: a jsonb array of {merged_id, merged_data, crop_key, source_result_ids}.
UPDATE merged_boxes mb
   SET merged_data = b.box->'merged_data',
       source_result_ids = ARRAY(SELECT jsonb_array_elements_text(b.box->'source_result_ids'))::bigint[],
       crop_key = b.box->>'crop_key', created = now(), worker_id = %(worker_id)s
  FROM jsonb_array_elements(%(boxes)s) AS b(box)
 WHERE mb.merged_id = (b.box->>'merged_id')::bigint AND mb.merged_data IS DISTINCT FROM b.box->'merged_data'

-- name: insert_boxes
-- New boxes, in one statement: a jsonb array of {merged_data, crop_key, source_result_ids}. Rows are inserted in
-- the array's order, so their ids ascend in it (one sequence, one statement).
INSERT INTO merged_boxes (image_id, source_result_ids, merged_data, crop_key, worker_id)
SELECT %(image_id)s, ARRAY(SELECT jsonb_array_elements_text(b.box->'source_result_ids'))::bigint[],
       b.box->'merged_data', b.box->>'crop_key', %(worker_id)s
  FROM jsonb_array_elements(%(boxes)s) WITH ORDINALITY AS b(box, position)
 ORDER BY b.position
RETURNING merged_id

-- name: enqueue_new_boxes_postprocessing
-- Queue the postprocessing of the boxes this transaction has just inserted, in the order given, in one INSERT
-- (sql/0102: why they need no dedupe lock; sql/0012: which services a box gets, the job contract).
SELECT enqueue_boxes_postprocessing(%(merged_ids)s::bigint[])

-- name: record_merge
-- Remember this recompute: the results it read, and whether the box set changed (a change is a new revision, which
-- the consensus records having counted).
INSERT INTO merged_images (image_id, boxes, source_result_ids, worker_id, merged_at, changed_at, revision)
SELECT %(image_id)s, %(boxes)s, %(source_result_ids)s, %(worker_id)s, now(), now(),
       CASE WHEN %(changed)s THEN 1 ELSE 0 END
 WHERE EXISTS (SELECT 1 FROM images WHERE image_id = %(image_id)s)  -- deleted meanwhile: nothing to remember
ON CONFLICT (image_id) DO UPDATE
   SET merged_at = now(), boxes = EXCLUDED.boxes, source_result_ids = EXCLUDED.source_result_ids,
       worker_id = EXCLUDED.worker_id,
       changed_at = CASE WHEN %(changed)s THEN now() ELSE merged_images.changed_at END,
       revision = merged_images.revision + CASE WHEN %(changed)s THEN 1 ELSE 0 END

-- name: box_postprocessing
-- The postprocessing services a box gets (sql/0012 box_postprocessing: colors, and face and pose for people).
SELECT box_postprocessing(%(merged_data)s, %(crop_key)s)
