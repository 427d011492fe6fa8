-- Status in constant time (issue 13 item 4, DESIGN rule 8). service_progress counted, per service, the distinct
-- images with a success and the images whose latest answer failed by reading every answer: a full index scan that
-- grows with the collection. Now counters are kept as the answers arrive.
--
-- - As little as possible per answer: a row trigger appends the answer's key (id, image, service, status, time)
--   to service_answer_count_deltas, one small insert. No hot row (nobody updates a per-service counter that every
--   writer of that service would queue on), no lock, no lookup.
-- - Everything else in the fold (fold_answer_counts): the periodic pass (scheduled_pass: pg_cron or the scheduler
--   role) and `windmill-cli status` take the deltas visible to one statement, look up the other answers of the
--   (image, service) pairs they touch through results_image_service_idx, and add to the counters what each pair
--   changed: from "before" (the pair's rows without those the batch added, with those it removed) to "after" (its
--   rows now). Exact under concurrency: an answer and its delta commit together, so a fold sees both or neither;
--   folds take turns on an advisory lock, each starting from where the previous one ended.
-- - Rates too: counting the last hour's successes through the index reads as many entries as the pipeline
--   answered in an hour (12M at 300 images/s). The fold also adds successes per minute of result_created to
--   service_answer_minutes (two hours kept); rate_1h sums at most 60 of those per service. rate_1m stays an exact
--   index range of the last minute, last_success_at one index entry (the newest).
-- - service_progress shows the counters as of the last fold: status folds first, psql readers see at most one
--   period's lag. Answers are never updated (no UPDATE on results for any role), only inserted and deleted.
-- - `windmill-cli status --recount` (recount_answer_counts) rebuilds the counters from every answer, for a
--   database restored from elsewhere or counters suspected wrong. It holds answer writers back while it counts.

-- Counters folded so far, one row per service (a service with no row counts zero).
CREATE TABLE service_answer_counts (
    service text PRIMARY KEY,
    done bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    folded_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE service_answer_counts IS
    'Per service: images with a success answer (done) and images whose latest answer failed, as of the last fold.';

-- Appended by the answers' trigger, emptied by every fold. No index: a fold reads it whole.
CREATE TABLE service_answer_count_deltas (
    result_id bigint NOT NULL,
    image_id bigint NOT NULL,
    service text NOT NULL,
    status text NOT NULL,
    result_created timestamptz NOT NULL,
    change smallint NOT NULL CHECK (change IN (1, -1))  -- 1: the answer was stored, -1: deleted
);
COMMENT ON TABLE service_answer_count_deltas IS
    'Answers stored (change 1) or deleted (-1) since the last fold of service_answer_counts.';

-- Successes per service and minute of result_created, for the rates; the fold keeps the last two hours.
CREATE TABLE service_answer_minutes (
    service text NOT NULL,
    minute timestamptz NOT NULL,
    successes bigint NOT NULL,
    PRIMARY KEY (service, minute)
);
COMMENT ON TABLE service_answer_minutes IS
    'Successful answers per service and minute (of result_created), folded from the deltas; two hours kept.';

-- The one rule for what a pair of (image, service) counts, given its answers' statuses newest first: done when any
-- answer succeeded, failed when the latest one is an error or a timeout (a later success or retry supersedes it).
CREATE FUNCTION pair_done(p_statuses_newest_first text[]) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN 'success' = ANY (p_statuses_newest_first) THEN 1 ELSE 0 END
$$;

CREATE FUNCTION pair_failed(p_statuses_newest_first text[]) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_statuses_newest_first[1] IN ('error', 'timeout') THEN 1 ELSE 0 END
$$;

CREATE FUNCTION note_answer_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO service_answer_count_deltas VALUES
            (NEW.result_id, NEW.image_id, NEW.service, NEW.status, NEW.result_created, 1);
    ELSE
        INSERT INTO service_answer_count_deltas VALUES
            (OLD.result_id, OLD.image_id, OLD.service, OLD.status, OLD.result_created, -1);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER results_note_change AFTER INSERT OR DELETE ON results
    FOR EACH ROW EXECUTE FUNCTION note_answer_change();

-- Folds take turns (and a recount waits for them) on this transaction-scoped advisory lock: 'WCNT'.
CREATE FUNCTION answer_counts_lock() RETURNS bigint LANGUAGE sql IMMUTABLE AS $$ SELECT 1464028756::bigint $$;

-- Fold the deltas into the counters and the minutes; returns how many delta rows were folded. SECURITY DEFINER:
-- `status` folds before it reads, also as the monitor login, which may write nothing else.
CREATE FUNCTION fold_answer_counts() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = windmill, pg_temp AS $$
DECLARE
    folded bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(answer_counts_lock());
    DELETE FROM service_answer_minutes WHERE minute < now() - interval '2 hours';
    -- A fresh snapshot, taken after the lock: the previous fold's work is seen. One statement: the deltas taken
    -- and the answers read are of the same moment.
    WITH batch AS (
        DELETE FROM service_answer_count_deltas
        RETURNING result_id, image_id, service, status, result_created, change
    ), added AS (
        SELECT DISTINCT result_id FROM batch WHERE change = 1
    ), pairs AS (
        SELECT DISTINCT image_id, service FROM batch
    ), pair_rows AS (
        -- The pairs' answers now ("after"); "before" too unless this batch added them.
        SELECT r.image_id, r.service, r.result_id, r.status, r.result_created, true AS after,
               r.result_id NOT IN (SELECT result_id FROM added) AS before
          FROM pairs p
          JOIN results r ON r.image_id = p.image_id AND r.service = p.service
        UNION ALL
        -- Answers deleted since the last fold were there before, unless this batch also added them.
        SELECT b.image_id, b.service, b.result_id, b.status, b.result_created, false, true
          FROM batch b
         WHERE b.change = -1 AND b.result_id NOT IN (SELECT result_id FROM added)
    ), changes AS (
        SELECT service,
               pair_done(after_rows) - pair_done(before_rows) AS done,
               pair_failed(after_rows) - pair_failed(before_rows) AS failed
          FROM (SELECT image_id, service,
                       array_agg(status ORDER BY result_created DESC, result_id DESC) FILTER (WHERE after)
                           AS after_rows,
                       array_agg(status ORDER BY result_created DESC, result_id DESC) FILTER (WHERE before)
                           AS before_rows
                  FROM pair_rows
                 GROUP BY image_id, service) states
    ), counted AS (
        INSERT INTO service_answer_counts AS c (service, done, failed)
        SELECT service, sum(done), sum(failed) FROM changes GROUP BY service
        ON CONFLICT (service) DO UPDATE
           SET done = c.done + EXCLUDED.done, failed = c.failed + EXCLUDED.failed, folded_at = now()
        RETURNING 1
    ), per_minute AS (
        INSERT INTO service_answer_minutes AS m (service, minute, successes)
        SELECT service, date_trunc('minute', result_created), sum(change)
          FROM batch
         WHERE status = 'success'
         GROUP BY service, date_trunc('minute', result_created)
        HAVING sum(change) <> 0
        ON CONFLICT (service, minute) DO UPDATE SET successes = m.successes + EXCLUDED.successes
        RETURNING 1
    )
    -- `counted` and `per_minute` run all the same: a CTE that writes always does.
    SELECT count(*) INTO folded FROM batch;
    RETURN folded;
END $$;

-- Rebuild the counters from every answer. The table lock waits for the answer writers that have noted a change
-- and holds back the others until this transaction ends, so each answer is either in the recount's snapshot (taken
-- after the lock) or noted after it, never both. Reads every answer: an operator's repair, not a periodic query.
-- Returns the services counted.
CREATE FUNCTION recount_answer_counts() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    counted integer;
BEGIN
    PERFORM pg_advisory_xact_lock(answer_counts_lock());
    LOCK TABLE service_answer_count_deltas IN SHARE ROW EXCLUSIVE MODE;
    DELETE FROM service_answer_count_deltas;
    DELETE FROM service_answer_counts;
    DELETE FROM service_answer_minutes;
    INSERT INTO service_answer_minutes (service, minute, successes)
    SELECT service, date_trunc('minute', result_created), count(*)
      FROM results
     WHERE status = 'success' AND result_created >= now() - interval '2 hours'
     GROUP BY service, date_trunc('minute', result_created);
    INSERT INTO service_answer_counts (service, done, failed)
    SELECT service, sum(pair_done(statuses)), sum(pair_failed(statuses))
      FROM (SELECT service, array_agg(status ORDER BY result_created DESC, result_id DESC) AS statuses
              FROM results GROUP BY image_id, service) pairs
     GROUP BY service;
    GET DIAGNOSTICS counted = ROW_COUNT;  -- of the last statement: the services with answers
    RETURN counted;
END $$;

-- The counters of the answers already stored when this migration runs.
SELECT recount_answer_counts();

-- Rows of a table for status's totals: counted when the planner's estimate (pg_class.reltuples, kept by autovacuum
-- and ANALYZE) is under 100,000, the estimate above that. A count reads the whole table: at 1M images the
-- answers alone would take seconds.
CREATE FUNCTION table_rows(p_table regclass) RETURNS bigint LANGUAGE plpgsql STABLE AS $$
DECLARE
    estimate bigint;
    exact bigint;
BEGIN
    SELECT reltuples::bigint INTO estimate FROM pg_class WHERE oid = p_table;
    IF estimate >= 100000 THEN
        RETURN estimate;
    END IF;
    EXECUTE format('SELECT count(*) FROM %s', p_table) INTO exact;
    RETURN exact;
END $$;

-- service_progress reads the counters instead of the answers; everything else as before (sql/0007).
CREATE OR REPLACE VIEW service_progress AS
SELECT s.name AS service,
       s.category,
       waiting.queued,
       running.running,
       coalesce(counted.done, 0) AS done,
       coalesce(counted.failed, 0) AS failed,
       last_minute.successes AS rate_1m,
       round(coalesce(last_hour.successes, 0) / 60.0, 2) AS rate_1h,
       newest.last_success_at
  FROM services s
  LEFT JOIN service_answer_counts counted ON counted.service = s.name
  LEFT JOIN (SELECT service, sum(successes) AS successes FROM service_answer_minutes
              WHERE minute >= now() - interval '1 hour'
              GROUP BY service) last_hour ON last_hour.service = s.name
 CROSS JOIN LATERAL (
        -- queued = waiting to run: new, or failed and waiting for its retry.
        SELECT count(*) AS queued FROM jobs j
         WHERE j.queue = 'queue_' || s.name AND j.state IN ('queued', 'failed')) waiting
 CROSS JOIN LATERAL (
        SELECT count(*) AS running FROM jobs j
         WHERE j.queue = 'queue_' || s.name AND j.state = 'running') running
 CROSS JOIN LATERAL (
        -- The last minute's successes, exactly: an index range as long as the rate.
        SELECT count(*) AS successes FROM results r
         WHERE r.service = s.name AND r.status = 'success'
           AND r.result_created > now() - interval '1 minute') last_minute
 CROSS JOIN LATERAL (
        -- One index entry: the newest of the (service, status, result_created) index.
        SELECT max(r.result_created) AS last_success_at FROM results r
         WHERE r.service = s.name AND r.status = 'success') newest;

-- The periodic pass (sql/0015) also folds the counters' deltas, so that status reads about one period's worth.
CREATE OR REPLACE PROCEDURE scheduled_pass(p_page integer DEFAULT 1000, p_retention interval DEFAULT interval '1 hour',
                                           p_limit integer DEFAULT 1000, INOUT queued jsonb DEFAULT NULL,
                                           INOUT pruned bigint DEFAULT NULL)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT coalesce(jsonb_object_agg(b.queue, b.queued), '{}') INTO queued FROM windmill.backfill(p_limit, p_page) b;
    COMMIT;
    PERFORM windmill.fold_answer_counts();
    COMMIT;
    CALL windmill.prune_jobs(p_retention, false, 1000, 100, pruned);
END $$;
