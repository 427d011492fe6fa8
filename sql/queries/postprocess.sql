-- name: boxes_to_postprocess
-- The boxes of a job's image that the service is still to see (sql/0115): box_postprocessing() gives them the
-- service and they have no row of it, in merged_id order, with their image. A job queued per box by an earlier
-- release passes its box (otherwise NULL).
SELECT mb.merged_id, mb.image_id, mb.merged_data, i.image_path, i.image_url
  FROM merged_boxes mb
  JOIN images i ON i.image_id = mb.image_id
 WHERE mb.image_id = %(image_id)s
   AND (%(merged_box_id)s::bigint IS NULL OR mb.merged_id = %(merged_box_id)s::bigint)
   AND %(service)s::text = ANY (box_postprocessing(mb.merged_data, mb.crop_key))
   AND NOT EXISTS (SELECT 1 FROM postprocessing p WHERE p.merged_box_id = mb.merged_id AND p.service = %(service)s)
 ORDER BY mb.merged_id

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

-- name: insert_postprocessing_rows
-- A job's rows (one image, one service) in one statement, so one transaction and one commit: a row per box, in the
-- order given; a box gone meanwhile (replaced by a merge while its crop was analysed) gets no row, nor one already
-- stored. Returns the boxes whose rows were written. The arrays go as binary parameters (insert_results says why).
-- A box deleted by a merge that commits between this statement's snapshot and its foreign-key check still fails it
-- (ForeignKeyViolation): the caller then writes the rows one at a time.
INSERT INTO postprocessing (image_id, merged_box_id, service, data, status, error_message, processing_time,
                            worker_id)
SELECT %(image_id)s, box.merged_box_id, %(service)s, box.data, box.status, box.error_message, box.processing_time,
       %(worker_id)s
  FROM unnest(%(merged_box_ids)b::bigint[], %(data)b::jsonb[], %(statuses)b::text[], %(error_messages)b::text[],
              %(processing_times)b::double precision[])
       WITH ORDINALITY AS box (merged_box_id, data, status, error_message, processing_time, position)
 WHERE EXISTS (SELECT 1 FROM merged_boxes mb WHERE mb.merged_id = box.merged_box_id)
 ORDER BY box.position
ON CONFLICT (merged_box_id, service) WHERE merged_box_id IS NOT NULL DO NOTHING
RETURNING merged_box_id
