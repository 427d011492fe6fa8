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

-- name: known_images_in_another_group
-- Of a batch's files or URLs, those registered before in another group (or in none) than %(group)s: an image
-- belongs to one group, and `images add --group` leaves a known one where it is.
SELECT count(*) FROM images
 WHERE image_group IS DISTINCT FROM %(group)s
   AND (image_path = ANY(%(paths)s::text[]) OR (image_path IS NULL AND image_url = ANY(%(urls)s::text[])))
