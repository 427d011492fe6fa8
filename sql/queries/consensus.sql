-- name: consensus_inputs
-- Everything a vote needs, in one statement (one snapshot, read after the image's consensus lock): one 'image' row
-- with the box set's revision, what the stored consensus records having read (NULLs when there is none), whether
-- this job's vote waits for the image's voter tasks and whether the image's deadline job is queued (sql/0104);
-- then the image's successful answers ('answer', the vote keeps the latest per service), its boxes ('box') and the
-- face and pose rows on them ('face_pose': evidence that a person box holds a person), each in id order. The
-- revision recorded is that of the boxes counted.
SELECT 'image' AS kind, coalesce(m.revision, 0)::bigint AS id, NULL::text AS service, NULL::text AS status,
       NULL::jsonb AS data, NULL::double precision AS processing_time, NULL::timestamptz AS created,
       NULL::bigint AS merged_box_id, c.source_result_ids, c.boxes_revision, c.postprocessing_ids,
       consensus_waits_for_voters(i.image_id, %(payload)s) AS waits_for_voters,
       consensus_deadline_queued(i.image_id) AS deadline_queued
  FROM (SELECT %(image_id)s::bigint AS image_id) AS i
  LEFT JOIN merged_images m ON m.image_id = i.image_id
  LEFT JOIN consensus c ON c.image_id = i.image_id
UNION ALL
SELECT 'answer', result_id, service, status, data, processing_time, result_created, NULL, NULL, NULL, NULL, NULL,
       NULL
  FROM results
 WHERE image_id = %(image_id)s AND status = 'success'
UNION ALL
SELECT 'box', merged_id, NULL, NULL, merged_data, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
  FROM merged_boxes
 WHERE image_id = %(image_id)s
UNION ALL
SELECT 'face_pose', postprocessing_id, service, status, data, NULL, NULL, merged_box_id, NULL, NULL, NULL, NULL,
       NULL
  FROM postprocessing
 WHERE image_id = %(image_id)s AND service IN ('face', 'pose')
 ORDER BY kind, id

-- name: drop_consensus_deadline
-- The vote was not put off: the image's deadline job is not needed (sql/0104).
SELECT drop_consensus_deadline(%(image_id)s)

-- name: enqueue_consensus_deadline
-- The vote put off: make sure the image's deadline job is waiting (sql/0104); one already waiting keeps its time.
SELECT enqueue_consensus_deadline(%(image_id)s)

-- name: store_consensus
-- One row per image, replaced by every recompute, with the inputs it was computed from.
INSERT INTO consensus (image_id, consensus_data, processing_time, worker_id, source_result_ids, boxes_revision,
                       postprocessing_ids)
VALUES (%(image_id)s, %(consensus_data)s, %(processing_time)s, %(worker_id)s, %(source_result_ids)s,
        %(boxes_revision)s, %(postprocessing_ids)s)
ON CONFLICT (image_id) DO UPDATE
   SET consensus_data = EXCLUDED.consensus_data, processing_time = EXCLUDED.processing_time,
       worker_id = EXCLUDED.worker_id, consensus_created = now(), source_result_ids = EXCLUDED.source_result_ids,
       boxes_revision = EXCLUDED.boxes_revision, postprocessing_ids = EXCLUDED.postprocessing_ids
