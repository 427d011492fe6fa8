-- The pipeline benchmark's watch (windmill.bench.pipeline): triggers that note each merge and each
-- postprocessing row, and the figures read from them and from the bench images' rows at the end.

-- name: bench_pipeline_watch
-- Note every merge (which answers it was computed from, when it committed), every per-box postprocessing
-- insert and delete, and every consensus stored, in tables of the benchmark's own.
CREATE TABLE IF NOT EXISTS bench_merge_events (
    image_id bigint, result_ids bigint[], committed_at timestamptz DEFAULT clock_timestamp());
CREATE OR REPLACE FUNCTION bench_note_merge() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_merge_events (image_id, result_ids) VALUES (NEW.image_id, NEW.source_result_ids);
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER bench_note_merge AFTER INSERT OR UPDATE ON merged_images
    FOR EACH ROW EXECUTE FUNCTION bench_note_merge();
CREATE TABLE IF NOT EXISTS bench_postprocessing_events (op text, per_box boolean);
CREATE OR REPLACE FUNCTION bench_note_postprocessing() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO bench_postprocessing_events VALUES ('delete', OLD.merged_box_id IS NOT NULL);
    ELSE
        INSERT INTO bench_postprocessing_events VALUES ('insert', NEW.merged_box_id IS NOT NULL);
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER bench_note_postprocessing AFTER INSERT OR DELETE ON postprocessing
    FOR EACH ROW EXECUTE FUNCTION bench_note_postprocessing();
CREATE TABLE IF NOT EXISTS bench_consensus_events (image_id bigint);
CREATE OR REPLACE FUNCTION bench_note_consensus() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_consensus_events VALUES (NEW.image_id);
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER bench_note_consensus AFTER INSERT OR UPDATE ON consensus
    FOR EACH ROW EXECUTE FUNCTION bench_note_consensus();

-- name: bench_pipeline_unwatch
DROP TRIGGER IF EXISTS bench_note_merge ON merged_images;
DROP FUNCTION IF EXISTS bench_note_merge();
DROP TABLE IF EXISTS bench_merge_events;
DROP TRIGGER IF EXISTS bench_note_postprocessing ON postprocessing;
DROP FUNCTION IF EXISTS bench_note_postprocessing();
DROP TABLE IF EXISTS bench_postprocessing_events;
DROP TRIGGER IF EXISTS bench_note_consensus ON consensus;
DROP FUNCTION IF EXISTS bench_note_consensus();
DROP TABLE IF EXISTS bench_consensus_events;

-- name: bench_pipeline_waste
-- Calls whose answers went nowhere: per-box rows deleted with their replaced box, plus answers that found their
-- box gone when they arrived (their insert failed, but it used an id).
SELECT count(*) FILTER (WHERE op = 'insert' AND per_box) AS stored,
       count(*) FILTER (WHERE op = 'delete' AND per_box) AS replaced,
       count(*) FILTER (WHERE op = 'insert') AS inserted
  FROM bench_postprocessing_events

-- name: bench_pipeline_votes
-- The consensus work of the bench images: votes stored, and consensus jobs run (claimed at least once and done,
-- including those that found nothing changed or were put off for outstanding voter tasks; a deadline job dropped
-- unclaimed is not counted).
SELECT (SELECT count(*) FROM bench_consensus_events e JOIN images i USING (image_id)
         WHERE i.image_group = %(group)s) AS stored,
       (SELECT count(*) FROM jobs j JOIN images i USING (image_id)
         WHERE i.image_group = %(group)s AND j.queue = 'consensus' AND j.state = 'done' AND j.attempts > 0) AS run

-- name: bench_pipeline_latencies
-- Per detector answer of the bench images: milliseconds from its commit to the first merge that used it.
SELECT extract(epoch FROM min(e.committed_at) - r.result_created) * 1000
  FROM results r
  JOIN images i USING (image_id)
  JOIN services s ON s.name = r.service AND s.is_detector
  JOIN bench_merge_events e ON e.image_id = r.image_id AND r.result_id = ANY(e.result_ids)
 WHERE i.image_group = %(group)s AND r.status = 'success'
 GROUP BY r.result_id, r.result_created

-- name: bench_pipeline_span
-- The pipeline's span in seconds: from %(since)s (the baseline bench's submit) or, when null, the first answer, to the
-- last product written (the tools around it, such as the submit command's start-up and the benchmark's polling, are
-- not the pipeline; tasks may travel by RabbitMQ, unseen here).
SELECT extract(epoch FROM greatest(
           (SELECT max(r.result_created) FROM results r JOIN images i USING (image_id) WHERE i.image_group = %(group)s),
           (SELECT max(p.result_created) FROM postprocessing p JOIN images i USING (image_id)
             WHERE i.image_group = %(group)s),
           (SELECT max(m.merged_at) FROM merged_images m JOIN images i USING (image_id)
             WHERE i.image_group = %(group)s),
           (SELECT max(c.consensus_created) FROM consensus c JOIN images i USING (image_id)
             WHERE i.image_group = %(group)s))
       - coalesce(%(since)s::timestamptz,
                  (SELECT min(r.result_created) FROM results r JOIN images i USING (image_id)
                    WHERE i.image_group = %(group)s)))

-- name: bench_postprocessing_ids_used
-- Every insert into postprocessing takes an id, whether it is stored or fails (its box was gone).
SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('postprocessing', 'postprocessing_id')), 0)

-- name: bench_pipeline_end_state
SELECT
  (SELECT count(*) FROM image_completeness WHERE image_group = %(group)s AND NOT consensus) AS missing_consensus,
  (SELECT count(*) FROM jobs j JOIN images i USING (image_id)
    WHERE i.image_group = %(group)s AND j.state IN ('running', 'dead')) AS stuck_jobs,
  (SELECT count(*) FROM postprocessing p JOIN images i USING (image_id)
    WHERE i.image_group = %(group)s AND p.merged_box_id IS NOT NULL) AS postprocessing_rows

-- name: bench_stored_consensus
SELECT c.image_id, c.consensus_data FROM consensus c JOIN images i USING (image_id) WHERE i.image_group = %(group)s

-- name: bench_all_answered
-- Whether the bench images hold at least the given number of answers.
SELECT count(*) >= %(answers)s FROM results r JOIN images i USING (image_id)
 WHERE i.image_group = %(group)s

-- name: bench_jobs_unfinished
-- Whether a job of the bench images is unfinished. Driven by the unfinished jobs, each state set matching a
-- partial index's predicate: scanning the whole (growing) jobs table 20 times a second took a sixth of
-- PostgreSQL's CPU from the pipeline it measures.
SELECT EXISTS (SELECT 1
                 FROM (SELECT image_id FROM jobs WHERE state IN ('queued', 'failed')
                       UNION ALL
                       SELECT image_id FROM jobs WHERE state = 'running') AS unfinished
                 JOIN images i USING (image_id)
                WHERE i.image_group = %(group)s)
