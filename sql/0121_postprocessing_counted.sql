-- Status counted no postprocessing: face, pose and the caption scorer showed 0 done however many boxes they had
-- answered (their answers are postprocessing rows, not service answers), and the colors of the crops were nowhere.
-- Now they are counted as the answers are (sql/0060: deltas appended by the writers, folded by the periodic pass and
-- by status), with less to keep:
--
-- - A postprocessing row is never updated and a box has at most one row per service, so a count is a sum of the
--   rows stored minus the rows deleted (a merge that replaces a box deletes its rows by cascade; a caption score
--   replaces the image's previous one). No per-pair state as the answers need.
-- - One delta per statement and service, not per row: the postprocess role stores a job's rows (one image, one
--   service) in one statement and a merge's cascade deletes in one, so a statement trigger appends one row where
--   a row trigger would append one per box.
-- - Counted per catalog service: colors (of the crops), face, pose, and caption_score for every captioner
--   (caption_score_blip, caption_score_ollama, … are one service in the catalog). done = answered (success or
--   empty), failed = an error or a timeout stored, of the boxes (caption scores: the captions) there are now.
-- - fold_answer_counts() and recount_answer_counts() keep their names, so status, the periodic pass (pg_cron, the
--   scheduler role) and `status --recount` fold and recount both without a change; the answers' fold and recount
--   move under names of their own, unchanged.

CREATE TABLE postprocessing_counts (
    service text PRIMARY KEY,
    done bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    last_answer_at timestamptz,
    folded_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE postprocessing_counts IS
    'Per postprocessing service: rows answered (success or empty) and failed (error or timeout), as of the last fold.';

-- Appended by the statement triggers below, emptied by every fold. No index: a fold reads it whole.
CREATE TABLE postprocessing_count_deltas (
    service text NOT NULL,
    done bigint NOT NULL,
    failed bigint NOT NULL,
    last_answer_at timestamptz
);
COMMENT ON TABLE postprocessing_count_deltas IS
    'Postprocessing rows stored (positive) or deleted (negative) per statement and service since the last fold.';

-- The catalog's name of a postprocessing row's service: the caption scores of every captioner are caption_score.
CREATE FUNCTION postprocessing_counted_service(p_service text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_service LIKE 'caption\_score\_%' THEN 'caption_score' ELSE p_service END
$$;

CREATE FUNCTION note_postprocessing_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO postprocessing_count_deltas (service, done, failed, last_answer_at)
        SELECT postprocessing_counted_service(service),
               count(*) FILTER (WHERE status IN ('success', 'empty')),
               count(*) FILTER (WHERE status IN ('error', 'timeout')),
               max(result_created)
          FROM stored
         GROUP BY 1;
    ELSE
        INSERT INTO postprocessing_count_deltas (service, done, failed, last_answer_at)
        SELECT postprocessing_counted_service(service),
               -count(*) FILTER (WHERE status IN ('success', 'empty')),
               -count(*) FILTER (WHERE status IN ('error', 'timeout')),
               NULL
          FROM deleted
         GROUP BY 1;
    END IF;
    RETURN NULL;
END $$;

-- A statement that stores or deletes no row (every box already answered: ON CONFLICT DO NOTHING) appends nothing.
CREATE TRIGGER postprocessing_note_stored AFTER INSERT ON postprocessing
    REFERENCING NEW TABLE AS stored FOR EACH STATEMENT EXECUTE FUNCTION note_postprocessing_change();
CREATE TRIGGER postprocessing_note_deleted AFTER DELETE ON postprocessing
    REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION note_postprocessing_change();

-- The answers' fold and recount of sql/0060, under names of their own (their bodies and grants unchanged).
ALTER FUNCTION fold_answer_counts() RENAME TO fold_service_answer_counts;
ALTER FUNCTION recount_answer_counts() RENAME TO recount_service_answer_counts;

-- Fold the postprocessing deltas into the counters; returns how many delta rows were folded. Runs inside
-- fold_answer_counts (SECURITY DEFINER), under its advisory lock.
CREATE FUNCTION fold_postprocessing_counts() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    folded bigint;
BEGIN
    WITH batch AS (
        DELETE FROM postprocessing_count_deltas RETURNING service, done, failed, last_answer_at
    ), counted AS (
        INSERT INTO postprocessing_counts AS c (service, done, failed, last_answer_at)
        SELECT service, sum(done), sum(failed), max(last_answer_at) FROM batch GROUP BY service
        ON CONFLICT (service) DO UPDATE
           SET done = c.done + EXCLUDED.done, failed = c.failed + EXCLUDED.failed,
               last_answer_at = greatest(c.last_answer_at, EXCLUDED.last_answer_at), folded_at = now()
        RETURNING 1
    )
    SELECT count(*) INTO folded FROM batch;
    RETURN folded;
END $$;

-- What status and the periodic pass call: the answers' counters, then the postprocessing's; delta rows folded.
CREATE FUNCTION fold_answer_counts() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = windmill, pg_temp AS $$
BEGIN
    -- fold_service_answer_counts takes the folds' advisory lock; a transaction-scoped lock, held to the end.
    RETURN fold_service_answer_counts() + fold_postprocessing_counts();
END $$;

-- Rebuild the postprocessing counters from every row, as recount_service_answer_counts does the answers': the
-- table lock holds the writers back until this transaction ends. Returns the services counted.
CREATE FUNCTION recount_postprocessing_counts() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    counted integer;
BEGIN
    PERFORM pg_advisory_xact_lock(answer_counts_lock());
    LOCK TABLE postprocessing_count_deltas IN SHARE ROW EXCLUSIVE MODE;
    DELETE FROM postprocessing_count_deltas;
    DELETE FROM postprocessing_counts;
    INSERT INTO postprocessing_counts (service, done, failed, last_answer_at)
    SELECT postprocessing_counted_service(service),
           count(*) FILTER (WHERE status IN ('success', 'empty')),
           count(*) FILTER (WHERE status IN ('error', 'timeout')),
           max(result_created)
      FROM postprocessing
     GROUP BY 1;
    GET DIAGNOSTICS counted = ROW_COUNT;
    RETURN counted;
END $$;

-- `status --recount`: both; returns the services with answers (of either kind).
CREATE FUNCTION recount_answer_counts() RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    RETURN recount_service_answer_counts() + recount_postprocessing_counts();
END $$;

-- The postprocessing services with their job queues (one per service, sql/0115; the caption scorer's is
-- caption_score) and counters. A service appears when the catalog makes it postprocessing only (face, pose,
-- caption_score) or once a row of it is counted (colors, which is also a primary service).
CREATE VIEW postprocessing_progress AS
SELECT s.service,
       coalesce(depth.queued + depth.scheduled + depth.retrying, 0) AS queued,
       coalesce(depth.running, 0) AS running,
       coalesce(counted.done, 0) AS done,
       coalesce(counted.failed, 0) AS failed,
       counted.last_answer_at,
       coalesce(depth.estimated, false) AS estimated
  FROM (SELECT name FROM services WHERE category IN ('spatial_only', 'postprocessing')
        UNION
        SELECT service FROM postprocessing_counts) s (service)
  LEFT JOIN queue_depth_rows() depth
         ON depth.queue = CASE s.service WHEN 'caption_score' THEN 'caption_score' ELSE 'postprocess_' || s.service END
  LEFT JOIN postprocessing_counts counted ON counted.service = s.service;
COMMENT ON VIEW postprocessing_progress IS
    'Per postprocessing service: job-table tasks, rows answered and failed (of the boxes, or captions, there are now).';

-- The counters of the rows already stored when this migration runs.
SELECT recount_postprocessing_counts();
