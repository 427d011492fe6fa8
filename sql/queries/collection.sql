-- name: images_page
-- A page of the collection's images after an id, ascending (keyset paging: each page costs the same).
SELECT image_id, image_filename, image_path, image_url, image_group, image_created
  FROM images
 WHERE image_id > %(after_id)s AND (%(group)s::text IS NULL OR image_group = %(group)s)
 ORDER BY image_id
 LIMIT %(limit)s

-- name: add_images
-- Register a batch of files or URLs as images; one already known is skipped. A file's size and modification time
-- (ns) are recorded when the caller has them (`images watch`), NULL otherwise (`images add` does not stat files).
INSERT INTO images (image_filename, image_path, image_url, image_group, image_size, image_mtime_ns)
SELECT * FROM unnest(%(filenames)s::text[], %(paths)s::text[], %(urls)s::text[], %(groups)s::text[],
                     %(sizes)s::bigint[], %(mtimes)s::bigint[])
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

-- name: remove_image_replaced_by_move
-- A registered file moved (`images watch`) onto the path of another registered image: that image's file was
-- replaced and is gone for good, so it is removed with everything stored for it (ON DELETE CASCADE and the ledger's
-- trigger, as `images remove`), leaving its path to the image that moved there. Nothing when the source is no
-- registered image (an upload's temporary name renamed into place: an arrival).
DELETE FROM images
 WHERE image_path = %(destination)s::text AND %(destination)s::text <> %(source)s::text
   AND EXISTS (SELECT 1 FROM images WHERE image_path = %(source)s::text)
RETURNING image_id

-- name: move_image
-- A registered file renamed or moved inside a watched folder: the image keeps its id, group and answers, its path
-- and file name follow the file.
UPDATE images SET image_path = %(destination)s::text, image_filename = %(filename)s::text
 WHERE image_path = %(source)s::text
RETURNING image_id

-- name: recorded_files
-- The registered images of these files (`images watch`, a page of files that settled) with the size and
-- modification time recorded of each (NULL: none recorded), to tell a file written again since.
SELECT image_id, image_path, image_size, image_mtime_ns, image_group
  FROM images
 WHERE image_path = ANY(%(paths)s::text[])

-- name: record_file_signatures
-- A registered file changed in time but not in content (a touch) or had nothing recorded (`images add`): what the
-- watch sees now is recorded, so that a watch started later compares with it.
UPDATE images SET image_size = recorded.size, image_mtime_ns = recorded.mtime_ns
  FROM unnest(%(ids)s::bigint[], %(sizes)s::bigint[], %(mtimes)s::bigint[]) AS recorded (image_id, size, mtime_ns)
 WHERE images.image_id = recorded.image_id
