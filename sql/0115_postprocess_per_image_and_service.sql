-- A postprocessing job per image and service instead of per box and service (issue 13 item 6, issue 19 item 5:
-- the CPU per image).
--
-- Why. Every job is inserted, claimed and completed, each a new row version in half a dozen indexes; a bulk run
-- queued about 6.4 postprocessing jobs per image (colors for every box, face and pose for every person box, and again
-- for each box a later merge of the image replaced), a quarter of all its jobs. One job per image and service does
-- the image's boxes one after the other; a merge that finds that job still waiting adds nothing but its boxes, which
-- the job reads when it runs (a box replaced meanwhile is never sent at all).
--
-- What the job does (windmill/roles/postprocess.py): the boxes of the image that box_postprocessing() gives the
-- service and that have no row of it yet, in merged_id order, each stored in its own transaction as before (a row
-- per box, ON CONFLICT DO NOTHING; a box replaced during its call drops its answer). A passing failure of one box
-- keeps the rows stored before it and retries the job, which then starts at that box: the job's attempts are the
-- image's and the service's, not each box's. A job queued by an earlier release (payload `merged_box_id`) does its
-- one box.
--
-- The lock. A merge's new boxes are invisible until it commits, and a job already waiting under the image's key must
-- not be claimed before then, or it would run without them: enqueue_boxes_postprocessing() inserts the keys nobody
-- holds and sends the rest through enqueue(), which takes that lock (FOR SHARE, 0012; sql/0102 explains the split).
-- Since a key is now the image's, a merge after the first often finds the job waiting and takes the lock.

CREATE FUNCTION postprocess_job(p_image_id bigint, p_service text) RETURNS job_spec
LANGUAGE sql STABLE AS $$
    SELECT ROW('postprocess_' || p_service, p_image_id, jsonb_build_object('image_id', p_image_id),
               p_service || ':image:' || p_image_id, now(), 5)::job_spec
$$;

-- The box's job is its image's (kept for callers of the three-argument form).
CREATE OR REPLACE FUNCTION postprocess_job(p_merged_id bigint, p_image_id bigint, p_service text) RETURNS job_spec
LANGUAGE sql STABLE AS $$
    SELECT postprocess_job(p_image_id, p_service)
$$;

-- sql/0108's function: each (image, service) the boxes need once, in the order its first box and service come.
CREATE OR REPLACE FUNCTION enqueue_boxes_postprocessing(p_merged_ids bigint[]) RETURNS integer LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    wanted job_spec[];
    inserted text[];
BEGIN
    SELECT array_agg(postprocess_job(w.image_id, w.service) ORDER BY w.first_box, w.first_service)
      INTO wanted
      FROM (SELECT mb.image_id, s.service, min(b.position) AS first_box, min(s.position) AS first_service
              FROM unnest(p_merged_ids) WITH ORDINALITY AS b(merged_id, position)
             CROSS JOIN LATERAL (SELECT m.merged_id, m.image_id, m.merged_data, m.crop_key
                                   FROM merged_boxes m WHERE m.merged_id = b.merged_id OFFSET 0) AS mb
             CROSS JOIN LATERAL unnest(box_postprocessing(mb.merged_data, mb.crop_key))
                        WITH ORDINALITY AS s(service, position)
             GROUP BY mb.image_id, s.service) AS w;
    IF wanted IS NULL THEN
        RETURN 0;
    END IF;
    WITH queued AS (
        INSERT INTO jobs (queue, image_id, payload, dedupe_key, max_attempts, run_after)
        SELECT w.queue, w.image_id, coalesce(w.payload, '{}'), w.dedupe_key, coalesce(w.max_attempts, 5),
               coalesce(w.run_after, now())
          FROM unnest(wanted) WITH ORDINALITY AS w
         ORDER BY w.ordinality
        ON CONFLICT (queue, dedupe_key) WHERE state = 'queued' DO NOTHING
        RETURNING queue || ' ' || dedupe_key AS key)
    SELECT array_agg(key) INTO inserted FROM queued;
    IF cardinality(inserted) = cardinality(wanted) THEN
        RETURN cardinality(inserted);
    END IF;
    -- The image's job already waits under some keys: enqueue() locks it until this merge commits (the header).
    RETURN coalesce(cardinality(inserted), 0)
           + (SELECT count(enqueue(ROW(w.queue, w.image_id, w.payload, w.dedupe_key, w.run_after,
                                       w.max_attempts)::job_spec))::integer
                FROM unnest(wanted) AS w
               WHERE NOT (w.queue || ' ' || w.dedupe_key = ANY(coalesce(inserted, '{}'))));
END $$;

-- sql/0014's staleness, the postprocessing part per image and service; the rest unchanged.
CREATE OR REPLACE FUNCTION stale_products(p_after bigint, p_upto bigint) RETURNS SETOF job_spec
LANGUAGE sql STABLE AS $$
    WITH latest AS (
        -- The latest successful answer of each service, as the merger and the vote pick it.
        SELECT DISTINCT ON (r.image_id, r.service) r.image_id, r.service, r.result_id
          FROM results r
         WHERE r.image_id > p_after AND r.image_id <= p_upto AND r.status = 'success'
         ORDER BY r.image_id, r.service, r.result_created DESC, r.result_id DESC
    ), answered AS (
        SELECT l.image_id,
               array_agg(l.result_id ORDER BY l.result_id) AS result_ids,
               array_agg(l.result_id ORDER BY l.result_id) FILTER (WHERE s.is_detector) AS detector_ids
          FROM latest l
          JOIN services s ON s.name = l.service
         GROUP BY l.image_id
    ), post AS (
        -- The page's postprocessing rows, read once by an index range (every lookup below stays in the page).
        SELECT p.image_id, p.merged_box_id, p.service, p.postprocessing_id, p.source_result_id
          FROM postprocessing p
         WHERE p.image_id > p_after AND p.image_id <= p_upto
    ), face_pose AS (
        SELECT p.image_id, array_agg(p.postprocessing_id ORDER BY p.postprocessing_id) AS ids
          FROM post p
         WHERE p.service IN ('face', 'pose')
         GROUP BY p.image_id
    ), merged AS (
        SELECT m.image_id, m.source_result_ids, m.revision
          FROM merged_images m
         WHERE m.image_id > p_after AND m.image_id <= p_upto
    ), evidence AS (
        SELECT image_id FROM answered UNION SELECT image_id FROM merged UNION SELECT image_id FROM face_pose
    )
    SELECT (merge_job(a.image_id)).*
      FROM answered a
      LEFT JOIN merged m ON m.image_id = a.image_id
     WHERE a.detector_ids IS NOT NULL AND m.source_result_ids IS DISTINCT FROM a.detector_ids
    UNION ALL
    SELECT (consensus_job(e.image_id)).*
      FROM evidence e
      LEFT JOIN answered a ON a.image_id = e.image_id
      LEFT JOIN merged m ON m.image_id = e.image_id
      LEFT JOIN face_pose f ON f.image_id = e.image_id
      LEFT JOIN consensus c ON c.image_id = e.image_id AND c.image_id > p_after AND c.image_id <= p_upto
     WHERE c.image_id IS NULL
        OR c.source_result_ids IS DISTINCT FROM coalesce(a.result_ids, '{}')
        OR c.boxes_revision IS DISTINCT FROM coalesce(m.revision, 0)
        OR c.postprocessing_ids IS DISTINCT FROM coalesce(f.ids, '{}')
    UNION ALL
    SELECT (postprocess_job(missing.image_id, missing.service)).*
      FROM (SELECT DISTINCT mb.image_id, wanted.service
              FROM merged_boxes mb
             CROSS JOIN LATERAL unnest(box_postprocessing(mb.merged_data, mb.crop_key)) AS wanted (service)
             WHERE mb.image_id > p_after AND mb.image_id <= p_upto
               AND NOT EXISTS (SELECT 1 FROM post p
                                WHERE p.merged_box_id = mb.merged_id AND p.service = wanted.service)) AS missing
    UNION ALL
    SELECT (caption_score_job(l.image_id, l.service)).*
      FROM latest l
      JOIN services s ON s.name = l.service AND s.caption_scoring
     WHERE NOT EXISTS (SELECT 1 FROM post p
                        WHERE p.image_id = l.image_id AND p.service = 'caption_score_' || l.service
                          AND p.merged_box_id IS NULL AND p.source_result_id = l.result_id)
$$;
