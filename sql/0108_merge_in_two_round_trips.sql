-- A merge in two statements (issue 13 item 6: PostgreSQL's CPU per image; issue 19 item 5: Windmill's CPU per image).
--
-- Why. A merge (windmill/roles/merger.py merge_image, about 2.6 per image) sent BEGIN, the image lock, the detectors'
-- latest answers, the stored boxes, then up to a delete, an update, an insert, the postprocessing enqueue and the
-- merge record, and COMMIT: 6 to 9 round trips, each paying the server's fixed cost of a statement (parse or plan
-- cache, executor start, send and receive, a context switch), which is most of what a merge costs it. Now a merge is
-- BEGIN, merge_inputs() (the lock, then both reads), store_merge() (every write) and COMMIT. Harmonizing stays in
-- Python (windmill/harmony) between the two.
--
-- The snapshot rule. merge_inputs() takes the image's lock in one statement and reads in the next ones. It is
-- VOLATILE PL/pgSQL under READ COMMITTED, so each of its statements takes a new snapshot: the reads start after the
-- lock was granted and see everything the lock's previous holder (another merge of the image) committed, as
-- separate statements from the client did (sql/0105's queue_vote keeps the same rule). One statement that locked and
-- read would read on the snapshot taken before it waited: a merge that waited for another would not see the boxes
-- that one stored, and would insert them again (tests/test_merge_round_trips.py proves it with two connections).
--
-- The writes keep their statements (sql/queries/merge.sql had them), in their order, inside store_merge(): boxes
-- gone are deleted (their postprocessing cascades), boxes seen again are updated in place (their rows and
-- postprocessing stay), new boxes are inserted in the given order (ascending ids), their postprocessing is queued by
-- enqueue_boxes_postprocessing() (sql/0102's semantics, unchanged), and the merge is recorded. The deferred consensus
-- trigger on merged_boxes fires at commit for the rows touched, as before.
--
-- enqueue_boxes_postprocessing() on its generic plans. It cost 0.7-0.9 ms a call, of which planning its two
-- statements anew at every call was a part: PostgreSQL's plan cache compares a statement's generic plan with its
-- custom plans, and a custom plan knows the size of the array of boxes (or of jobs) where the generic plan assumes
-- ten elements, so the custom plan always looked cheaper and was made again at every call. The function now uses its
-- generic plans (plan_cache_mode, as sql/0100 does for job_queue_backed_up; it applies inside the function and what it
-- calls). For the generic plan to be safe whatever the size of merged_boxes when a session first plans it, the boxes
-- are looked up one by one (a LATERAL subquery kept apart by OFFSET 0): the plain join's generic plan, made on a small
-- table, hashed the ids and scanned the whole table, and would keep doing so once it had grown.
-- (tests/test_merge_round_trips.py asserts the index scan on an empty and on a big analyzed table.) Otherwise the
-- function is sql/0102's, unchanged.

-- The latest successful answer of every detector for one image: the merge's input, and what `render` and the chaos
-- audit draw or check it against. SQL, STABLE, one SELECT: PostgreSQL inlines it into the statement that calls it.
CREATE FUNCTION latest_detector_results(p_image_id bigint) RETURNS TABLE (result_id bigint, service text, data jsonb)
LANGUAGE sql STABLE AS $$
    SELECT DISTINCT ON (r.service) r.result_id, r.service, r.data
      FROM results r
      JOIN services s ON s.name = r.service
     WHERE r.image_id = p_image_id AND r.status = 'success' AND s.is_detector
     ORDER BY r.service, r.result_created DESC, r.result_id DESC
$$;

-- Lock the image's merge (p_namespace: windmill/locks.py Product.MERGED_BOXES, image_lock_key's namespace), then read
-- its inputs: a row per detector answer (result_id, service, data), then a row per stored box (merged_id, crop_key,
-- data). VOLATILE, and each read a statement of its own after the lock (the header): they see what the lock's
-- previous holder committed.
CREATE FUNCTION merge_inputs(p_image_id bigint, p_namespace integer)
RETURNS TABLE (result_id bigint, service text, merged_id bigint, crop_key text, data jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(image_lock_key(p_image_id, p_namespace));
    RETURN QUERY SELECT a.result_id, a.service, NULL::bigint, NULL::text, a.data
                   FROM latest_detector_results(p_image_id) AS a;
    RETURN QUERY SELECT NULL::bigint, NULL::text, mb.merged_id, mb.crop_key, mb.merged_data
                   FROM merged_boxes AS mb
                  WHERE mb.image_id = p_image_id;
END $$;

-- Store a merge's outcome (the header): p_gone, the ids of stored boxes to delete; p_changed, a jsonb array of
-- {merged_id, merged_data, crop_key, source_result_ids} to update; p_new, a jsonb array of {merged_data, crop_key,
-- source_result_ids} to insert, in order; p_boxes and p_source_result_ids, what the merge record keeps. Returns the
-- new boxes' ids in the order given. Call it holding the image's merge lock (merge_inputs).
CREATE FUNCTION store_merge(p_image_id bigint, p_worker_id text, p_gone bigint[], p_changed jsonb, p_new jsonb,
                            p_boxes integer, p_source_result_ids bigint[]) RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    updated integer := 0;
    inserted bigint[] := '{}';
    changed boolean;
BEGIN
    IF cardinality(p_gone) > 0 THEN
        -- Their postprocessing rows go with them (ON DELETE CASCADE).
        DELETE FROM merged_boxes WHERE merged_id = ANY(p_gone);
    END IF;
    IF jsonb_array_length(p_changed) > 0 THEN
        -- Boxes seen again keep their rows (and their postprocessing); their position and agreement are refreshed.
        UPDATE merged_boxes AS mb
           SET merged_data = b.box -> 'merged_data',
               source_result_ids = ARRAY(SELECT jsonb_array_elements_text(b.box -> 'source_result_ids'))::bigint[],
               crop_key = b.box ->> 'crop_key', created = now(), worker_id = p_worker_id
          FROM jsonb_array_elements(p_changed) AS b(box)
         WHERE mb.merged_id = (b.box ->> 'merged_id')::bigint AND mb.merged_data IS DISTINCT FROM b.box -> 'merged_data';
        GET DIAGNOSTICS updated = ROW_COUNT;
    END IF;
    IF jsonb_array_length(p_new) > 0 THEN
        -- One statement inserts them in the array's order, so their ids ascend in it (one sequence).
        WITH new_box AS (
            INSERT INTO merged_boxes (image_id, source_result_ids, merged_data, crop_key, worker_id)
            SELECT p_image_id, ARRAY(SELECT jsonb_array_elements_text(b.box -> 'source_result_ids'))::bigint[],
                   b.box -> 'merged_data', b.box ->> 'crop_key', p_worker_id
              FROM jsonb_array_elements(p_new) WITH ORDINALITY AS b(box, position)
             ORDER BY b.position
            RETURNING merged_boxes.merged_id)
        SELECT array_agg(new_box.merged_id ORDER BY new_box.merged_id) INTO inserted FROM new_box;
        -- sql/0102: why the boxes just inserted need no dedupe lock.
        PERFORM enqueue_boxes_postprocessing(inserted);
    END IF;
    -- Remember this recompute: the results it read, and whether the box set changed (a change is a new revision,
    -- which the consensus records having counted).
    changed := cardinality(p_gone) > 0 OR cardinality(inserted) > 0 OR updated > 0;
    INSERT INTO merged_images (image_id, boxes, source_result_ids, worker_id, merged_at, changed_at, revision)
    SELECT p_image_id, p_boxes, p_source_result_ids, p_worker_id, now(), now(), CASE WHEN changed THEN 1 ELSE 0 END
     WHERE EXISTS (SELECT 1 FROM images WHERE images.image_id = p_image_id)  -- deleted meanwhile: nothing to remember
    ON CONFLICT (image_id) DO UPDATE
       SET merged_at = now(), boxes = EXCLUDED.boxes, source_result_ids = EXCLUDED.source_result_ids,
           worker_id = EXCLUDED.worker_id,
           changed_at = CASE WHEN changed THEN now() ELSE merged_images.changed_at END,
           revision = merged_images.revision + CASE WHEN changed THEN 1 ELSE 0 END;
    RETURN inserted;
END $$;

-- sql/0102's function, on its generic plans, the boxes looked up one by one (the header).
CREATE OR REPLACE FUNCTION enqueue_boxes_postprocessing(p_merged_ids bigint[]) RETURNS integer LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    wanted job_spec[];
    inserted text[];
BEGIN
    SELECT array_agg(postprocess_job(mb.merged_id, mb.image_id, s.service) ORDER BY b.position, s.position)
      INTO wanted
      FROM unnest(p_merged_ids) WITH ORDINALITY AS b(merged_id, position)
     CROSS JOIN LATERAL (SELECT m.merged_id, m.image_id, m.merged_data, m.crop_key
                           FROM merged_boxes m WHERE m.merged_id = b.merged_id OFFSET 0) AS mb
     CROSS JOIN LATERAL unnest(box_postprocessing(mb.merged_data, mb.crop_key)) WITH ORDINALITY AS s(service, position);
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
    -- A job already waits under some keys (an old box): enqueue() locks it, as the job contract requires (0012).
    RETURN coalesce(cardinality(inserted), 0)
           + (SELECT count(enqueue(ROW(w.queue, w.image_id, w.payload, w.dedupe_key, w.run_after,
                                       w.max_attempts)::job_spec))::integer
                FROM unnest(wanted) AS w
               WHERE NOT (w.queue || ' ' || w.dedupe_key = ANY(coalesce(inserted, '{}'))));
END $$;
