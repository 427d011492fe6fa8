-- name: images_page
-- A page of the collection's images after an id, ascending (keyset paging: each page costs the same).
SELECT image_id, image_filename, image_path, image_url, image_group, image_created
  FROM images
 WHERE image_id > %(after_id)s AND (%(group)s::text IS NULL OR image_group = %(group)s)
 ORDER BY image_id
 LIMIT %(limit)s

-- name: add_images
-- Register a batch of files or URLs as images; one already known is skipped.
INSERT INTO images (image_filename, image_path, image_url, image_group)
SELECT * FROM unnest(%(filenames)s::text[], %(paths)s::text[], %(urls)s::text[], %(groups)s::text[])
ON CONFLICT DO NOTHING
