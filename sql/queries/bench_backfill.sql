-- name: bench_history_images
-- A synthetic collection for `bench backfill` (and the backfill's plan guard test): images added behind the
-- triggers' back (the caller sets session_replication_role = replica), with a path prefix of their own.
INSERT INTO images (image_filename, image_path, image_group)
SELECT 'h' || g || '.jpg', %(prefix)s || g || '.jpg', %(group)s
  FROM generate_series(1, %(images)s) AS g
RETURNING image_id

-- name: bench_history_answers
-- One successful answer per primary service and image: detectors with a person and a dog, the others empty;
-- answered %(answered_ago_s)s seconds ago, spread over %(spread_s)s more seconds by image (1: not spread).
INSERT INTO results (image_id, service, task_id, data, status, processing_time, result_created)
SELECT i.image_id, s.name, gen_random_uuid(),
       CASE WHEN s.is_detector
            THEN '{"predictions": [{"label": "person", "emoji": "🧑", "confidence": 0.9,
                                    "bbox": {"x": 10, "y": 10, "width": 50, "height": 90}},
                                   {"label": "dog", "emoji": "🐕", "confidence": 0.8,
                                    "bbox": {"x": 100, "y": 40, "width": 60, "height": 40}}]}'::jsonb
            ELSE '{"predictions": []}'::jsonb END,
       'success', 0.05,
       now() - make_interval(secs => (%(answered_ago_s)s + i.image_id %% %(spread_s)s)::double precision)
  FROM images i
 CROSS JOIN services s
 WHERE i.image_id BETWEEN %(first)s AND %(last)s AND s.category = 'primary'

-- name: bench_history_boxes
-- What the merger leaves: two boxes per image (a person, a dog), and the merge record of the detector answers.
WITH boxes AS (
    INSERT INTO merged_boxes (image_id, source_result_ids, merged_data, crop_key)
    SELECT i.image_id, '{0}', jsonb_build_object('emoji', b.emoji, 'labels', jsonb_build_array(b.label)),
           b.emoji || ':' || b.x || ',10,50,50'
      FROM images i
     CROSS JOIN (VALUES ('🧑', 'person', 10), ('🐕', 'dog', 100)) AS b (emoji, label, x)
     WHERE i.image_id BETWEEN %(first)s AND %(last)s
    RETURNING image_id
)
INSERT INTO merged_images (image_id, boxes, source_result_ids, revision)
SELECT r.image_id, 2, array_agg(r.result_id ORDER BY r.result_id), 1
  FROM results r
  JOIN services s ON s.name = r.service AND s.is_detector
 WHERE r.image_id BETWEEN %(first)s AND %(last)s
 GROUP BY r.image_id

-- name: bench_history_postprocessing
-- Every box's postprocessing as box_postprocessing() asks for it, and each caption's score.
INSERT INTO postprocessing (image_id, merged_box_id, service, data, status, source_result_id)
SELECT mb.image_id, mb.merged_id, service, '{}'::jsonb, 'success', NULL::bigint
  FROM merged_boxes mb
 CROSS JOIN LATERAL unnest(box_postprocessing(mb.merged_data, mb.crop_key)) AS service
 WHERE mb.image_id BETWEEN %(first)s AND %(last)s
UNION ALL
SELECT r.image_id, NULL, 'caption_score_' || r.service, '{}'::jsonb, 'success', r.result_id
  FROM results r
  JOIN services s ON s.name = r.service AND s.caption_scoring
 WHERE r.image_id BETWEEN %(first)s AND %(last)s

-- name: bench_history_consensus
-- A consensus per image that records exactly its current inputs: healthy, nothing for the backfill to do.
INSERT INTO consensus (image_id, consensus_data, source_result_ids, boxes_revision, postprocessing_ids)
SELECT i.image_id, '{}',
       (SELECT array_agg(r.result_id ORDER BY r.result_id) FROM results r WHERE r.image_id = i.image_id),
       1,
       coalesce((SELECT array_agg(p.postprocessing_id ORDER BY p.postprocessing_id) FROM postprocessing p
                  WHERE p.image_id = i.image_id AND p.service IN ('face', 'pose')), '{}')
  FROM images i
 WHERE i.image_id BETWEEN %(first)s AND %(last)s

-- name: bench_history_jobs
-- The done jobs such a history leaves (per image: %(per_image)s), finished over the last two hours: half of them
-- are older than the default retention.
INSERT INTO jobs (queue, image_id, payload, state, attempts, created_at, updated_at)
SELECT 'merge', i.image_id, '{}', 'done', 1, finished, finished
  FROM images i
 CROSS JOIN LATERAL generate_series(1, %(per_image)s) AS n
 CROSS JOIN LATERAL (SELECT now() - make_interval(secs => ((i.image_id * 7 + n * 13) %% 7200)::double precision)
                     AS finished) AS t
 WHERE i.image_id BETWEEN %(first)s AND %(last)s

-- name: bench_lose_consensus
-- Break the next page on purpose: delete the consensus of every tenth image after the backfill's position.
DELETE FROM consensus c
 USING (SELECT image_id FROM images
         WHERE image_id > (SELECT after_image_id FROM backfill_state)
         ORDER BY image_id LIMIT %(page)s) AS page
 WHERE c.image_id = page.image_id AND c.image_id %% 10 = 0

-- name: bench_storage
-- Table and index bytes of the tables a history fills.
SELECT c.relname, pg_table_size(c.oid) AS table_bytes, pg_indexes_size(c.oid) AS index_bytes
  FROM pg_class c
 WHERE c.relnamespace = 'windmill'::regnamespace AND c.relkind = 'r'
   AND c.relname IN ('images', 'results', 'merged_boxes', 'merged_images', 'postprocessing', 'consensus', 'jobs')
 ORDER BY c.relname
