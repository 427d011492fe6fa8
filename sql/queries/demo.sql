-- name: group_image_ids
SELECT image_id, image_filename FROM images WHERE image_group = %(group)s ORDER BY image_id

-- name: group_image_products
-- Per image: merged boxes, postprocessing rows and the top emoji of its consensus.
SELECT i.image_id, i.image_filename,
       (SELECT count(*) FROM merged_boxes mb WHERE mb.image_id = i.image_id) AS boxes,
       (SELECT count(*) FROM postprocessing p WHERE p.image_id = i.image_id AND p.merged_box_id IS NOT NULL)
           AS postprocessed,
       (SELECT string_agg(item->>'emoji', ' ' ORDER BY ordinality)
          FROM consensus c, jsonb_array_elements(c.consensus_data->'votes'->'consensus') WITH ORDINALITY AS t(item)
         WHERE c.image_id = i.image_id AND ordinality <= 3) AS top_emoji
  FROM images i
 WHERE i.image_group = %(group)s
 ORDER BY i.image_id
