-- A merge's postprocessing jobs in one INSERT (issue 13 item 6: PostgreSQL's CPU per image). The merger queued its new
-- boxes' postprocessing through enqueue() one job at a time (about six per image), each a dedupe SELECT ... FOR SHARE,
-- an INSERT and the covered-job settings (0080), run apart.
--
-- enqueue_boxes_postprocessing(merged_ids) inserts every (box, service) job that box_postprocessing() asks for in one
-- INSERT ... SELECT, ON CONFLICT DO NOTHING on the queued-dedupe index, and sends only the rows that met a conflict
-- through enqueue(). Row by row, that is enqueue()'s own outcome: enqueue() locks a job only when it finds one
-- waiting under the key (FOR SHARE, so that the job is not claimed before the enqueuing transaction commits, 0012);
-- when none waits it inserts, as this INSERT does, and the new job is invisible to every claimer until this
-- transaction commits. A row whose key is taken by a waiting job (or by an insert in progress elsewhere, which
-- ON CONFLICT waits for) is not inserted, and enqueue() then finds that job and locks it, or inserts when it is gone
-- by then, exactly as it would have.
--
-- Why the merger never needs that lock. It passes the boxes it has just inserted in this very transaction
-- (sql/queries/merge.sql enqueue_new_boxes_postprocessing). Their merged_id comes from the sequence in this
-- transaction, and the box is invisible to every other transaction until commit, so no job can carry its key yet:
-- the backfill (stale_products, 0014) reads committed boxes only, and another merger of the image waits for our
-- image lock, then deletes or keeps committed boxes only. No job is waiting to be locked, so no lock is skipped, and
-- the fallback does not run. The other callers: the backfill does not call this function (it queues through
-- enqueue() with job_pending(), 0014); enqueue_postprocessing(merged_id), for a box of any age (tests, operators),
-- now calls it with its one box and keeps the lock through the fallback whenever a job is already waiting.
--
-- Wake-up: jobs_notify_queued fires for each inserted row, and its transaction-local setting (0098) decides once per
-- queue and transaction, as it did for the same rows inserted one by one. The covered-job settings of 0080 are not
-- written: each postprocessing key is queued once per merge, so none would be asked for again.

-- Queue the postprocessing the given boxes need, box by box in the order given, each box's services in
-- box_postprocessing()'s order; returns how many jobs were newly queued (a box that is gone gets none).
CREATE FUNCTION enqueue_boxes_postprocessing(p_merged_ids bigint[]) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    wanted job_spec[];
    inserted text[];
BEGIN
    SELECT array_agg(postprocess_job(mb.merged_id, mb.image_id, s.service) ORDER BY b.position, s.position)
      INTO wanted
      FROM unnest(p_merged_ids) WITH ORDINALITY AS b(merged_id, position)
      JOIN merged_boxes mb ON mb.merged_id = b.merged_id
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

CREATE OR REPLACE FUNCTION enqueue_postprocessing(p_merged_id bigint) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    RETURN enqueue_boxes_postprocessing(ARRAY[p_merged_id]);
END $$;
