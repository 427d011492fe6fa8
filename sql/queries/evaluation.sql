-- name: eval_images
-- Images of the collection with one of these file names (optionally of one group); when a name is
-- registered twice, the first registered image stands for it.
SELECT DISTINCT ON (image_filename) image_id, image_filename
  FROM images
 WHERE image_filename = ANY(%(filenames)s)
   AND (%(group)s::text IS NULL OR image_group = %(group)s::text)
 ORDER BY image_filename, image_id

-- name: eval_detector_results
-- The latest successful answer of every detector for each of the images.
SELECT DISTINCT ON (r.image_id, r.service) r.image_id, r.result_id, r.service, r.data
  FROM results r
  JOIN detector_services d ON d.name = r.service
 WHERE r.image_id = ANY(%(image_ids)s) AND r.status = 'success'
 ORDER BY r.image_id, r.service, r.result_created DESC, r.result_id DESC

-- name: eval_merged_boxes
-- The merged boxes of the images, and every image whose boxes were computed (an image with no box
-- has a merge record and no rows: it counts, with no predictions).
SELECT m.image_id, b.merged_data
  FROM merged_images m
  LEFT JOIN merged_boxes b ON b.image_id = m.image_id
 WHERE m.image_id = ANY(%(image_ids)s)
UNION ALL
SELECT b.image_id, b.merged_data
  FROM merged_boxes b
 WHERE b.image_id = ANY(%(image_ids)s)
   AND NOT EXISTS (SELECT 1 FROM merged_images m WHERE m.image_id = b.image_id)

-- name: eval_merge_inputs
-- The detector answers each image's last merge read (merged_images.source_result_ids): what the clusters
-- its democratic filter turned down are recomputed from, for `eval --include-rejected`.
SELECT m.image_id, r.result_id, r.service, r.data
  FROM merged_images m
  JOIN results r ON r.result_id = ANY(m.source_result_ids) AND r.image_id = m.image_id
 WHERE m.image_id = ANY(%(image_ids)s)
 ORDER BY m.image_id, r.service, r.result_id
