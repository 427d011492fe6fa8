-- name: images_to_remove
-- The next page of the images a removal selects (any of: ids, a group, exact paths, URLs, paths under folders, those
-- added before an instant), after an id: keyset paging, so the selection is walked once whatever the pages.
SELECT image_id FROM images
 WHERE image_id > %(after_id)s
   AND (image_id = ANY(%(ids)s::bigint[])
        OR image_group = %(group)s::text
        OR image_path = ANY(%(paths)s::text[])
        OR image_url = ANY(%(urls)s::text[])
        OR EXISTS (SELECT 1 FROM unnest(%(folders)s::text[]) AS folder WHERE starts_with(image_path, folder))
        OR image_created < %(added_before)s::timestamptz)
 ORDER BY image_id
 LIMIT %(limit)s

-- name: count_images_to_remove
-- How many images a removal selects (what it asks to confirm): a pass over the table.
SELECT count(*) FROM images
 WHERE image_id = ANY(%(ids)s::bigint[])
    OR image_group = %(group)s::text
    OR image_path = ANY(%(paths)s::text[])
    OR image_url = ANY(%(urls)s::text[])
    OR EXISTS (SELECT 1 FROM unnest(%(folders)s::text[]) AS folder WHERE starts_with(image_path, folder))
    OR image_created < %(added_before)s::timestamptz

-- name: remove_images
-- Remove images with everything stored for them: answers, boxes, postprocessing, consensus, jobs and merge state
-- go by ON DELETE CASCADE, submit's ledger entries by their trigger.
DELETE FROM images WHERE image_id = ANY(%(ids)s::bigint[]) RETURNING image_id
