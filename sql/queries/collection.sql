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

-- name: image_group_names
-- The collection's group names in order, one index probe each (a loose scan of images_group_idx: as fast at ten
-- million images as at ten, when the groups are few).
WITH RECURSIVE names AS (
    (SELECT image_group FROM images WHERE image_group IS NOT NULL ORDER BY image_group LIMIT 1)
    UNION ALL
    SELECT (SELECT image_group FROM images WHERE image_group > names.image_group ORDER BY image_group LIMIT 1)
      FROM names
     WHERE names.image_group IS NOT NULL
)
SELECT image_group FROM names WHERE image_group IS NOT NULL LIMIT %(limit)s

-- name: image_groups
-- Each group's images (NULL: those in no group); it reads every image's index entry.
SELECT image_group, count(*) AS images FROM images GROUP BY image_group ORDER BY image_group NULLS FIRST
