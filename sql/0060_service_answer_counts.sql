-- Status in constant time (issue 13 item 4, DESIGN rule 8). service_progress counted, per service, the distinct
-- images with a success and the images whose latest answer failed by reading every answer: a full index scan that
-- grows with the collection. Now the answers keep counters as they arrive.
--
-- - No hot row: an answer appends a small delta row (service, done change, failed change) instead of updating a
--   per-service counter that every writer of that service would queue on. The periodic pass (scheduled_pass,
--   pg_cron or the scheduler role) folds the deltas into service_answer_counts; service_progress adds the deltas
--   not folded yet, so it is exact at any moment and reads one row per service plus the deltas of one period.
-- - Exact under concurrency: the change an answer makes depends on the other answers of its (image, service) pair
--   (a second success changes nothing, an error after a success changes `failed` only when it is the latest). A
--   transaction-scoped advisory lock per pair serialises the writers of one pair: the second one's statements run
--   after the first committed and see its row (READ COMMITTED: a fresh snapshot per statement). Different pairs
--   never wait for one another. Every statement takes its pairs' locks in (image_id, service) order, so two
--   statements cannot wait on each other in a cycle.
-- - Statement-level triggers with transition tables: a batched INSERT of several rows of one pair (or an image's
--   DELETE cascading over all its answers) is one change of the pair, seen before and after the statement.
-- - Rates too: counting the last hour's successes through the index reads as many entries as the pipeline
--   answered in an hour (12M at 300 images/s). The deltas carry each answer's minute; the fold adds them to
--   per-minute totals (service_answer_minutes, two hours kept), and rate_1h sums at most 60 of those per service.
--   rate_1m stays an exact index range of the last minute, last_success_at one index entry (the newest).
-- - `windmill-cli status --recount` (recount_answer_counts) rebuilds the counters from the answers, for a
--   database restored from elsewhere or counters suspected wrong. It blocks answer writers while it counts.

-- Counters folded so far, one row per service (a service with no row counts zero).
CREATE TABLE service_answer_counts (
    service text PRIMARY KEY,
    done bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    folded_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE service_answer_counts IS
    'Per service: images with a success answer (done) and images whose latest answer failed, up to the last fold '
    '(service_progress adds service_answer_count_deltas).';

-- Appended by the answers' triggers, emptied by every fold. No index: it is only ever read whole.
CREATE TABLE service_answer_count_deltas (
    service text NOT NULL,
    done integer NOT NULL DEFAULT 0,
    failed integer NOT NULL DEFAULT 0,
    minute timestamptz NOT NULL,  -- of the answers' result_created, for `successes`
    successes integer NOT NULL DEFAULT 0
);
COMMENT ON TABLE service_answer_count_deltas IS
    'Changes of service_answer_counts and service_answer_minutes not folded yet: rows of answer statements that '
    'changed a count or stored successes.';

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

-- The columns of an answer the counters look at.
CREATE TYPE answer_key AS (
    result_id bigint,
    image_id bigint,
    service text,
    status text,
    result_created timestamptz
);

-- Record the change of the counters made by a statement that added and/or removed these answers (already done:
-- `results` holds the added rows and no longer the removed ones).
CREATE FUNCTION record_answer_count_changes(p_added answer_key[], p_removed answer_key[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1464028756, hashtext(pairs.service || ':' || pairs.image_id))  -- 'WCNT'
       FROM (SELECT DISTINCT c.image_id, c.service
               FROM (SELECT image_id, service FROM unnest(p_added)
                     UNION ALL SELECT image_id, service FROM unnest(p_removed)) c
              ORDER BY c.image_id, c.service) pairs;
    -- A fresh snapshot: the pair's answers committed by whoever held its lock before us are seen. One delta row
    -- per service and minute (a single answer: one row), with the successes stored in that minute.
    INSERT INTO service_answer_count_deltas (service, minute, done, failed, successes)
    SELECT service, minute, sum(done), sum(failed), sum(successes)
      FROM (SELECT pair.service, date_trunc('minute', now()) AS minute,
                   pair_done(state.after_rows) - pair_done(state.before_rows) AS done,
                   pair_failed(state.after_rows) - pair_failed(state.before_rows) AS failed,
                   0 AS successes
              FROM (SELECT DISTINCT c.image_id, c.service
                      FROM (SELECT image_id, service FROM unnest(p_added)
                            UNION ALL SELECT image_id, service FROM unnest(p_removed)) c) pair
             CROSS JOIN LATERAL (
                    SELECT array_agg(a.status ORDER BY a.result_created DESC, a.result_id DESC)
                               FILTER (WHERE a.present_after) AS after_rows,
                           array_agg(a.status ORDER BY a.result_created DESC, a.result_id DESC)
                               FILTER (WHERE a.present_before) AS before_rows
                      FROM (SELECT r.result_id, r.status, r.result_created, true AS present_after,
                                   r.result_id NOT IN (SELECT result_id FROM unnest(p_added)) AS present_before
                              FROM results r
                             WHERE r.image_id = pair.image_id AND r.service = pair.service
                            UNION ALL
                            SELECT o.result_id, o.status, o.result_created, false, true
                              FROM unnest(p_removed) o
                             WHERE o.image_id = pair.image_id AND o.service = pair.service) a) state
            UNION ALL
            SELECT service, date_trunc('minute', result_created), 0, 0, 1 FROM unnest(p_added) WHERE status = 'success'
            UNION ALL
            SELECT service, date_trunc('minute', result_created), 0, 0, -1
              FROM unnest(p_removed) WHERE status = 'success') changes
     GROUP BY service, minute
    HAVING sum(done) <> 0 OR sum(failed) <> 0 OR sum(successes) <> 0;
END $$;

CREATE FUNCTION count_answers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM record_answer_count_changes(
            (SELECT array_agg(ROW(n.result_id, n.image_id, n.service, n.status, n.result_created)::answer_key)
               FROM added_answers n), '{}');
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM record_answer_count_changes(
            '{}', (SELECT array_agg(ROW(o.result_id, o.image_id, o.service, o.status, o.result_created)::answer_key)
                     FROM removed_answers o));
    ELSE
        PERFORM record_answer_count_changes(
            (SELECT array_agg(ROW(n.result_id, n.image_id, n.service, n.status, n.result_created)::answer_key)
               FROM added_answers n),
            (SELECT array_agg(ROW(o.result_id, o.image_id, o.service, o.status, o.result_created)::answer_key)
               FROM removed_answers o));
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER results_count_inserted AFTER INSERT ON results
    REFERENCING NEW TABLE AS added_answers FOR EACH STATEMENT EXECUTE FUNCTION count_answers();
CREATE TRIGGER results_count_deleted AFTER DELETE ON results
    REFERENCING OLD TABLE AS removed_answers FOR EACH STATEMENT EXECUTE FUNCTION count_answers();
CREATE TRIGGER results_count_updated AFTER UPDATE ON results
    REFERENCING OLD TABLE AS removed_answers NEW TABLE AS added_answers
    FOR EACH STATEMENT EXECUTE FUNCTION count_answers();

-- Folded by every periodic pass (scheduled_pass, below) and by `windmill-cli status`.
CREATE FUNCTION fold_answer_counts() RETURNS bigint LANGUAGE sql AS $$
    DELETE FROM service_answer_minutes WHERE minute < now() - interval '2 hours';
    WITH moved AS (
        DELETE FROM service_answer_count_deltas RETURNING service, done, failed, minute, successes
    ), summed AS (
        SELECT service, sum(done) AS done, sum(failed) AS failed, count(*) AS deltas FROM moved GROUP BY service
    ), counted AS (
        INSERT INTO service_answer_counts AS c (service, done, failed)
        SELECT service, done, failed FROM summed
        ON CONFLICT (service) DO UPDATE
           SET done = c.done + EXCLUDED.done, failed = c.failed + EXCLUDED.failed, folded_at = now()
        RETURNING 1
    ), per_minute AS (
        INSERT INTO service_answer_minutes AS m (service, minute, successes)
        SELECT service, minute, sum(successes) FROM moved GROUP BY service, minute HAVING sum(successes) <> 0
        ON CONFLICT (service, minute) DO UPDATE SET successes = m.successes + EXCLUDED.successes
        RETURNING 1
    )
    -- `counted` and `per_minute` run all the same: a CTE that writes always does.
    SELECT coalesce(sum(deltas), 0)::bigint FROM summed
$$;

-- Rebuild the counters from every answer. The lock waits for the answer writers that have recorded a change and
-- holds back the others until this transaction ends, so each answer is either in the recount's snapshot (taken
-- after the lock) or records its change after it, never both. Reads every answer: an operator's repair, not a
-- periodic query. Returns the services counted.
CREATE FUNCTION recount_answer_counts() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    counted integer;
BEGIN
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
       coalesce(counted.done, 0) + coalesce(pending.done, 0) AS done,
       coalesce(counted.failed, 0) + coalesce(pending.failed, 0) AS failed,
       last_minute.successes AS rate_1m,
       round(coalesce(last_hour.successes, 0) / 60.0, 2) AS rate_1h,
       newest.last_success_at
  FROM services s
  LEFT JOIN service_answer_counts counted ON counted.service = s.name
  LEFT JOIN (SELECT service, sum(done) AS done, sum(failed) AS failed
               FROM service_answer_count_deltas GROUP BY service) pending ON pending.service = s.name
  LEFT JOIN (SELECT service, sum(successes) AS successes
               FROM (SELECT service, minute, successes FROM service_answer_minutes
                     UNION ALL
                     SELECT service, minute, successes FROM service_answer_count_deltas) m
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
