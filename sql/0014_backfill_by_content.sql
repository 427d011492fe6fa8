-- The backfill by content, a bounded page at a time (DESIGN rules 7 and 8).
--
-- A product is stale when the rows it records having read are not the current ones: the boxes' answers
-- (merged_images.source_result_ids) against the latest successful detector answers; the consensus' answers, box
-- revision and face/pose rows against the current ones; a caption score's caption against the latest caption of
-- its source; a box without the postprocessing box_postprocessing() says it needs. No timestamp is compared, so an
-- answer whose transaction started before a recompute and committed after it is still found.
--
-- Each run looks at one page of images, in image_id order from the position the previous run saved, and wraps
-- around at the end: its cost follows the page size, not the collection's. A run whose page had more work than
-- p_limit allows per queue keeps its position, so the next run finishes that page (what was queued is covered by
-- its waiting jobs by then). Expired leases are found through their own index, whatever the page.

-- Where the walk over the images stands: the next page starts after `after_image_id`.
CREATE TABLE backfill_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    after_image_id bigint NOT NULL DEFAULT 0,
    laps bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE backfill_state IS
    'The backfill''s saved position: the next page starts after after_image_id; laps counts walks completed.';
INSERT INTO backfill_state DEFAULT VALUES;

-- The jobs that would bring the products of images (p_after, p_upto] up to date, whether or not such a job is
-- already waiting (the backfill filters with job_pending; an audit can count them as they are). One statement,
-- inlined by the planner into its caller (hence the expanded `(spec).*` columns: a single composite column would
-- not be), reading each table by an index range on image_id.
CREATE FUNCTION stale_products(p_after bigint, p_upto bigint) RETURNS SETOF job_spec
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
    SELECT (postprocess_job(mb.merged_id, mb.image_id, wanted.service)).*
      FROM merged_boxes mb
     CROSS JOIN LATERAL unnest(box_postprocessing(mb.merged_data, mb.crop_key)) AS wanted (service)
     WHERE mb.image_id > p_after AND mb.image_id <= p_upto
       AND NOT EXISTS (SELECT 1 FROM post p WHERE p.merged_box_id = mb.merged_id AND p.service = wanted.service)
    UNION ALL
    SELECT (caption_score_job(l.image_id, l.service)).*
      FROM latest l
      JOIN services s ON s.name = l.service AND s.caption_scoring
     WHERE NOT EXISTS (SELECT 1 FROM post p
                        WHERE p.image_id = l.image_id AND p.service = 'caption_score_' || l.service
                          AND p.merged_box_id IS NULL AND p.source_result_id = l.result_id)
$$;

DROP FUNCTION backfill(integer);

-- Queue the jobs that repair stale products of the next page of images, and return jobs with expired leases to the
-- queue; one row per queue that got jobs. p_limit bounds each queue, p_page the images looked at. search_path is
-- fixed to the schema the migration runs in: pg_cron calls it with its own.
CREATE FUNCTION backfill(p_limit integer DEFAULT 1000, p_page integer DEFAULT 1000)
RETURNS TABLE (queue text, queued integer)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    n integer;
    page_after bigint;
    page_upto bigint;
    page_images integer;
    queues text[];
    counts integer[];
    more_work boolean;
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'backfill: p_limit must be at least 1, not %', p_limit USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_page IS NULL OR p_page < 1 THEN
        RAISE EXCEPTION 'backfill: p_page must be at least 1, not %', p_page USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Two backfills at once (pg_cron and a scheduler worker) would only do the same work twice.
    IF NOT pg_try_advisory_xact_lock(1464421954) THEN
        RAISE NOTICE 'another backfill is running; this one does nothing';
        RETURN;
    END IF;

    -- Jobs whose worker died: back to the queue at once rather than when the next claim notices. A job that
    -- has used all its attempts goes dead, as the claim query would do.
    WITH expired AS (
        SELECT j.id FROM jobs j
         WHERE j.state = 'running' AND j.lease_expires_at < now()
         ORDER BY j.lease_expires_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ), repaired AS (
        UPDATE jobs j
           SET state = CASE WHEN j.attempts >= j.max_attempts THEN 'dead'::job_state ELSE 'failed'::job_state END,
               run_after = now(),
               last_error = CASE WHEN j.attempts >= j.max_attempts
                                 THEN 'lease expired on the last attempt; given up by backfill'
                                 ELSE 'lease expired; requeued by backfill' END,
               lease_owner = NULL,
               lease_expires_at = NULL,
               updated_at = now()
          FROM expired
         WHERE j.id = expired.id
        RETURNING j.state
    )
    SELECT count(*) FILTER (WHERE repaired.state = 'failed') INTO n FROM repaired;
    IF n > 0 THEN
        queue := 'expired_leases'; queued := n; RETURN NEXT;
    END IF;

    -- The page: the next p_page images after the saved position.
    SELECT b.after_image_id INTO page_after FROM backfill_state b FOR UPDATE;
    SELECT max(page.image_id), count(*) INTO page_upto, page_images
      FROM (SELECT i.image_id FROM images i WHERE i.image_id > page_after ORDER BY i.image_id LIMIT p_page) page;

    IF page_images > 0 THEN
        WITH wanted AS MATERIALIZED (
            SELECT stale AS job, stale.queue,
                   row_number() OVER (PARTITION BY stale.queue ORDER BY stale.image_id, stale.dedupe_key) AS nth
              FROM stale_products(page_after, page_upto) AS stale
             WHERE NOT job_pending(stale)
        ), per_queue AS (
            SELECT w.queue, count(enqueue(w.job)) FILTER (WHERE w.nth <= p_limit)::integer AS n,
                   max(w.nth) > p_limit AS more
              FROM wanted w
             GROUP BY w.queue
        )
        SELECT array_agg(pq.queue ORDER BY pq.queue) FILTER (WHERE pq.n > 0),
               array_agg(pq.n ORDER BY pq.queue) FILTER (WHERE pq.n > 0),
               coalesce(bool_or(pq.more), false)
          INTO queues, counts, more_work
          FROM per_queue pq;
        FOR i IN 1..coalesce(cardinality(queues), 0) LOOP
            queue := queues[i]; queued := counts[i]; RETURN NEXT;
        END LOOP;
    END IF;

    -- Move on, unless this page still has work beyond p_limit; a short page ends the lap.
    IF NOT coalesce(more_work, false) THEN
        UPDATE backfill_state
           SET after_image_id = CASE WHEN page_images < p_page THEN 0 ELSE page_upto END,
               laps = laps + CASE WHEN page_images < p_page THEN 1 ELSE 0 END,
               updated_at = now();
    END IF;
END
$$;
COMMENT ON FUNCTION backfill(integer, integer) IS
    'Queue the jobs that repair stale merged boxes, consensus, postprocessing and caption scores of the next page '
    'of p_page images (compared by the rows each product records), at most p_limit per queue, and return jobs with '
    'expired leases to the queue. Safe to run any time; two at once: the second does nothing.';
