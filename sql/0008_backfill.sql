-- Backfills: the triggers enqueue follow-up work as answers arrive, but a job can still be lost (deleted by
-- hand, a trigger disabled during a bulk load, a worker killed while its lease ran out, rows restored from a
-- backup). backfill() finds images whose products are missing or older than their inputs and queues the jobs
-- that repair them, through enqueue_job (so it deduplicates against waiting jobs). pg_cron
-- (`windmill-cli cron install`) or `windmill-cli worker --role scheduler` runs it every minute.

-- Queue the jobs that repair missing or stale products; returns one row per queue that got jobs.
-- p_limit bounds each category (expired leases, merge, consensus, each postprocessing service, caption score)
-- so that a backfill after a large outage is spread over several runs instead of one huge transaction.
-- search_path is fixed to the schema the migration runs in: pg_cron calls it with its own search_path.
--
-- Work already taken care of is left alone: a job of the same queue (and, for per-box and per-source work, the
-- same dedupe key) waiting, running or waiting for a retry covers it. A dead job that gave up after the
-- evidence appeared covers it too: it was tried with that evidence, `windmill-cli jobs retry` is the operator's
-- tool, and a backfill must not turn a poison image into an endless requeue. Each category first finds its
-- stale candidates with set operations (materialized), and only then looks for covering jobs, by index, for
-- those few: on a healthy 100K-image collection there are none to look up.
CREATE FUNCTION backfill(p_limit integer DEFAULT 1000)
RETURNS TABLE (queue text, queued integer)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    n integer;
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'backfill: p_limit must be at least 1, not %', p_limit USING ERRCODE = 'invalid_parameter_value';
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

    -- merge: the latest successful detector answer is newer than the last recompute of the boxes (or the
    -- image was never merged).
    RETURN QUERY
    WITH answered AS (
        SELECT r.image_id, max(r.result_created) AS at
          FROM services s
          JOIN results r ON r.service = s.name AND r.status = 'success'
         WHERE s.is_detector
         GROUP BY r.image_id
    ), candidates AS MATERIALIZED (
        SELECT a.image_id, a.at
          FROM answered a
          LEFT JOIN merged_images m ON m.image_id = a.image_id
         WHERE m.image_id IS NULL OR a.at > m.merged_at
    ), stale AS (
        SELECT ca.image_id
          FROM candidates ca
         WHERE NOT EXISTS (SELECT 1 FROM jobs j
                            WHERE j.image_id = ca.image_id AND j.queue = 'merge'
                              AND (j.state IN ('queued', 'running', 'failed')
                                   OR (j.state = 'dead' AND j.updated_at >= ca.at)))
         ORDER BY ca.image_id
         LIMIT p_limit
    )
    SELECT 'merge'::text, c.n FROM (
        SELECT count(enqueue_job('merge', stale.image_id, jsonb_build_object('image_id', stale.image_id),
                                 'merge:' || stale.image_id))::integer AS n
          FROM stale) c
     WHERE c.n > 0;

    -- consensus: missing, or older than the newest of its evidence: voters' successful answers, the last
    -- change of the boxes, face and pose answers on the boxes.
    RETURN QUERY
    WITH evidence AS (
        SELECT e.image_id, max(e.at) AS at
          FROM (SELECT r.image_id, max(r.result_created) AS at
                  FROM services s
                  JOIN results r ON r.service = s.name AND r.status = 'success'
                 WHERE s.consensus_enabled
                 GROUP BY r.image_id
                UNION ALL
                SELECT m.image_id, m.changed_at FROM merged_images m
                UNION ALL
                SELECT p.image_id, max(p.result_created)
                  FROM postprocessing p
                 WHERE p.service IN ('face', 'pose')
                 GROUP BY p.image_id) e
         GROUP BY e.image_id
    ), candidates AS MATERIALIZED (
        SELECT ev.image_id, ev.at
          FROM evidence ev
          LEFT JOIN consensus c ON c.image_id = ev.image_id
         WHERE c.image_id IS NULL OR c.consensus_created < ev.at
    ), stale AS (
        SELECT ca.image_id
          FROM candidates ca
         WHERE NOT EXISTS (SELECT 1 FROM jobs j
                            WHERE j.image_id = ca.image_id AND j.queue = 'consensus'
                              AND (j.state IN ('queued', 'running', 'failed')
                                   OR (j.state = 'dead' AND j.updated_at >= ca.at)))
         ORDER BY ca.image_id
         LIMIT p_limit
    )
    SELECT 'consensus'::text, c.n FROM (
        SELECT count(enqueue_job('consensus', stale.image_id, jsonb_build_object('image_id', stale.image_id),
                                 'consensus:' || stale.image_id))::integer AS n
          FROM stale) c
     WHERE c.n > 0;

    -- postprocess_colors for every box without a colors row; postprocess_face and postprocess_pose for person
    -- boxes without a face or pose row. Payload and dedupe key as the merger queues them.
    RETURN QUERY
    WITH candidates AS MATERIALIZED (
        SELECT mb.merged_id, mb.image_id, mb.created, 'colors' AS service
          FROM merged_boxes mb
         WHERE NOT EXISTS (SELECT 1 FROM postprocessing p
                            WHERE p.merged_box_id = mb.merged_id AND p.service = 'colors')
        UNION ALL
        SELECT mb.merged_id, mb.image_id, mb.created, 'face'
          FROM merged_boxes mb
         WHERE is_person_box(mb.merged_data, mb.crop_key)
           AND NOT EXISTS (SELECT 1 FROM postprocessing p
                            WHERE p.merged_box_id = mb.merged_id AND p.service = 'face')
        UNION ALL
        SELECT mb.merged_id, mb.image_id, mb.created, 'pose'
          FROM merged_boxes mb
         WHERE is_person_box(mb.merged_data, mb.crop_key)
           AND NOT EXISTS (SELECT 1 FROM postprocessing p
                            WHERE p.merged_box_id = mb.merged_id AND p.service = 'pose')
    ), wanted AS (
        SELECT ca.merged_id, ca.image_id, ca.service,
               row_number() OVER (PARTITION BY ca.service ORDER BY ca.merged_id) AS nth
          FROM candidates ca
         WHERE NOT EXISTS (SELECT 1 FROM jobs j
                            WHERE j.image_id = ca.image_id AND j.queue = 'postprocess_' || ca.service
                              AND j.dedupe_key = ca.service || ':' || ca.merged_id
                              AND (j.state IN ('queued', 'running', 'failed')
                                   OR (j.state = 'dead' AND j.updated_at >= ca.created)))
    )
    SELECT 'postprocess_' || c.service, c.n FROM (
        SELECT w.service,
               count(enqueue_job('postprocess_' || w.service, w.image_id,
                                 jsonb_build_object('merged_box_id', w.merged_id, 'image_id', w.image_id),
                                 w.service || ':' || w.merged_id))::integer AS n
          FROM wanted w
         WHERE w.nth <= p_limit
         GROUP BY w.service) c
     WHERE c.n > 0
     ORDER BY 1;

    -- caption_score: a caption source's latest successful caption is newer than its caption_score_<source>
    -- row (or there is none).
    RETURN QUERY
    WITH captioned AS (
        SELECT r.image_id, r.service, max(r.result_created) AS at
          FROM services s
          JOIN results r ON r.service = s.name AND r.status = 'success'
         WHERE s.caption_scoring
         GROUP BY r.image_id, r.service
    ), candidates AS MATERIALIZED (
        SELECT ca.image_id, ca.service, ca.at
          FROM captioned ca
          LEFT JOIN postprocessing p
                 ON p.image_id = ca.image_id AND p.service = 'caption_score_' || ca.service
                AND p.merged_box_id IS NULL
         WHERE p.postprocessing_id IS NULL OR ca.at > p.result_created
    ), stale AS (
        SELECT ca.image_id, ca.service
          FROM candidates ca
         WHERE NOT EXISTS (SELECT 1 FROM jobs j
                            WHERE j.image_id = ca.image_id AND j.queue = 'caption_score'
                              AND j.dedupe_key = 'caption_score:' || ca.service || ':' || ca.image_id
                              AND (j.state IN ('queued', 'running', 'failed')
                                   OR (j.state = 'dead' AND j.updated_at >= ca.at)))
         ORDER BY ca.image_id, ca.service
         LIMIT p_limit
    )
    SELECT 'caption_score'::text, c.n FROM (
        SELECT count(enqueue_job('caption_score', stale.image_id,
                                 jsonb_build_object('image_id', stale.image_id, 'service', stale.service),
                                 'caption_score:' || stale.service || ':' || stale.image_id))::integer AS n
          FROM stale) c
     WHERE c.n > 0;
END
$$;
COMMENT ON FUNCTION backfill(integer) IS
    'Queue the jobs that repair missing or stale merged boxes, consensus, postprocessing and caption scores, '
    'and return jobs with expired leases to the queue; at most p_limit per category. Safe to run any time.';
