-- name: export_image_page
-- The next page of images to export, in image id order after a position (keyset: a page costs the same at
-- image 10 and at image 1,000,000), of the selection (sql/0040's export_selection). `dimensions` is the metadata
-- service's latest successful measure of the image as the services saw it (COCO's width and height).
SELECT i.image_id, i.image_filename, i.image_path, i.image_url, i.image_group, i.image_created,
       (SELECT r.data #> '{predictions,0,dimensions}'
          FROM results r
         WHERE r.image_id = i.image_id AND r.service = 'metadata' AND r.status = 'success'
         ORDER BY r.result_created DESC, r.result_id DESC
         LIMIT 1) AS dimensions
  FROM export_selection(%(after_id)s, %(group)s, %(since)s, %(limit)s) AS i
 ORDER BY i.image_id

-- name: export_image_count
-- How many images an export of the selection walks through (its progress bar).
SELECT count(*) FROM export_selection(%(after_id)s, %(group)s, %(since)s, NULL)

-- name: export_first_image_between
-- The first image of the selection after one id up to another (with a merged box, when asked): what `--after-id N`
-- into an output that ends at an earlier image would leave out. Image ids are distinct, so the selection's limit of
-- N − L keeps the walk to the ids between, however far the rest of the collection goes.
SELECT i.image_id
  FROM export_selection(%(after_id)s, %(group)s, %(since)s, %(through)s - %(after_id)s) AS i
 WHERE i.image_id <= %(through)s
   AND (NOT %(with_boxes)s OR EXISTS (SELECT 1 FROM merged_boxes b WHERE b.image_id = i.image_id))
 ORDER BY i.image_id
 LIMIT 1

-- name: export_detector_names
-- Every detector the database knows (sql/0119's view: the catalog's, and those it held before): whose results file
-- an earlier COCO export may have left beside the file, for the export to remove.
SELECT name FROM detector_services ORDER BY name

-- name: export_latest_answers
-- Per image and service (of the selection; NULL: all) the answer the products were computed from: the latest
-- success, or the latest failure when the service never succeeded on the image.
SELECT DISTINCT ON (r.image_id, r.service)
       r.image_id, r.service, r.result_id, r.status, r.error_message, r.processing_time, r.result_created,
       r.worker_id, r.data
  FROM results r
 WHERE r.image_id = ANY(%(image_ids)s)
   AND (%(services)s::text[] IS NULL OR r.service = ANY(%(services)s::text[]))
 ORDER BY r.image_id, r.service, r.status = 'success' DESC, r.result_created DESC, r.result_id DESC

-- name: server_clock
-- The clock that dates the rows `--since` compares with: the server's, not this machine's.
SELECT now()
