-- name: box_to_postprocess
-- The box a postprocessing job is for, with its image; no row when the box was replaced meanwhile.
SELECT mb.merged_id, mb.image_id, mb.merged_data, i.image_path, i.image_url,
       EXISTS (SELECT 1 FROM postprocessing p
                WHERE p.merged_box_id = mb.merged_id AND p.service = %(service)s) AS already_done
  FROM merged_boxes mb
  JOIN images i ON i.image_id = mb.image_id
 WHERE mb.merged_id = %(merged_box_id)s

-- name: image_boxes_to_crop
-- The boxes of an image with postprocessing still to come (fewer rows than box_postprocessing asks for): their
-- merged_bbox, to crop while the image's pixels are at hand.
SELECT mb.merged_data -> 'merged_bbox' AS bbox
  FROM merged_boxes mb
 WHERE mb.image_id = %(image_id)s
   AND cardinality(box_postprocessing(mb.merged_data, mb.crop_key))
       > (SELECT count(*) FROM postprocessing p WHERE p.merged_box_id = mb.merged_id)

-- name: insert_postprocessing
-- One row per box and service; a re-run writes nothing new.
INSERT INTO postprocessing (image_id, merged_box_id, service, data, status, error_message, processing_time,
                            worker_id)
VALUES (%(image_id)s, %(merged_box_id)s, %(service)s, %(data)s, %(status)s, %(error_message)s,
        %(processing_time)s, %(worker_id)s)
ON CONFLICT (merged_box_id, service) WHERE merged_box_id IS NOT NULL DO NOTHING
RETURNING postprocessing_id
