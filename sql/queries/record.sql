-- name: record_image
-- One image row, with the instant the record was read (every part below is read in the same transaction).
SELECT image_id, image_filename, image_path, image_url, image_group, image_created, now() AS extracted_at
  FROM images
 WHERE image_id = %(image_id)s

-- name: record_results
-- Every answer of the image, per service latest first.
SELECT service, result_id, task_id, status, error_message, processing_time, result_created, worker_id, data
  FROM results
 WHERE image_id = %(image_id)s
 ORDER BY service, result_created DESC, result_id DESC

-- name: record_boxes
-- The merged boxes of the images (one for `show`, a page of them for `export`) in the order they were stored.
SELECT image_id, merged_id, crop_key, status, created, worker_id, source_result_ids, merged_data
  FROM merged_boxes
 WHERE image_id = ANY(%(image_ids)s)
 ORDER BY image_id, merged_id

-- name: record_merge_state
-- When the boxes were last recomputed and last changed, from which answers, at which revision; no row before the
-- first merge.
SELECT merged_at, changed_at, boxes, source_result_ids, revision, worker_id
  FROM merged_images
 WHERE image_id = %(image_id)s

-- name: record_postprocessing
-- Postprocessing of the images' boxes and whole-image caption scores, latest first per box and service.
SELECT image_id, postprocessing_id, merged_box_id, service, status, error_message, processing_time, result_created,
       worker_id, source_result_id, data
  FROM postprocessing
 WHERE image_id = ANY(%(image_ids)s)
 ORDER BY image_id, merged_box_id NULLS LAST, service, result_created DESC, postprocessing_id DESC

-- name: record_consensus
-- The images' consensus rows (one per image at most) with what each was computed from (answers, box revision,
-- face/pose rows).
SELECT image_id, consensus_id, consensus_data, processing_time, consensus_created, worker_id, source_result_ids,
       boxes_revision, postprocessing_ids
  FROM consensus
 WHERE image_id = ANY(%(image_ids)s)
 ORDER BY image_id
