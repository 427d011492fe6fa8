-- The latency-profile pipeline benchmark (windmill.bench.latency_profile): when each image's first merged boxes
-- committed, and the figures read at the end from the bench images' rows.

-- name: bench_latency_watch
-- Note when each image's boxes were first merged, in a table of the benchmark's own.
CREATE TABLE IF NOT EXISTS bench_first_boxes (image_id bigint PRIMARY KEY,
                                              committed_at timestamptz DEFAULT clock_timestamp());
CREATE OR REPLACE FUNCTION bench_note_first_boxes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_first_boxes (image_id) VALUES (NEW.image_id) ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER bench_note_first_boxes AFTER INSERT OR UPDATE ON merged_images
    FOR EACH ROW EXECUTE FUNCTION bench_note_first_boxes();

-- name: bench_latency_unwatch
DROP TRIGGER IF EXISTS bench_note_first_boxes ON merged_images;
DROP FUNCTION IF EXISTS bench_note_first_boxes();
DROP TABLE IF EXISTS bench_first_boxes;

-- name: bench_latency_first_boxes
SELECT image_id, committed_at FROM bench_first_boxes

-- name: bench_latency_clock
-- The database's clock, which the boxes' commit times are read on.
SELECT clock_timestamp()

-- name: bench_latency_workers_up
-- How many of these worker processes have announced themselves and not stopped.
SELECT count(*) FROM workers WHERE pid = ANY(%(pids)s) AND stopped_at IS NULL

-- name: bench_latency_later_calls
-- Calls of the roles after the answers, from the rows they stored (caption scores are postprocessing rows of no
-- box).
SELECT CASE WHEN p.merged_box_id IS NULL THEN 'caption_score' ELSE p.service END, count(*)
  FROM postprocessing p JOIN images i USING (image_id)
 WHERE i.image_group = %(group)s AND (p.merged_box_id IS NOT NULL OR p.service LIKE 'caption\_score\_%%')
 GROUP BY 1

-- name: bench_latency_call_times
-- Each service's mean call time this run, as its client measured it (the stand-in draws latencies around the
-- profile's mean: over a few dozen calls their mean can stray by a tenth).
SELECT r.service, avg(r.processing_time) FROM results r JOIN images i USING (image_id)
 WHERE i.image_group = %(group)s AND r.status = 'success' GROUP BY r.service
UNION ALL
SELECT CASE WHEN p.merged_box_id IS NULL THEN 'caption_score' ELSE p.service END, avg(p.processing_time)
  FROM postprocessing p JOIN images i USING (image_id)
 WHERE i.image_group = %(group)s AND p.status = 'success' GROUP BY 1

-- name: bench_latency_last_product
-- When the last answer or product of the bench images was written.
SELECT greatest(
    (SELECT max(r.result_created) FROM results r JOIN images i USING (image_id) WHERE i.image_group = %(group)s),
    (SELECT max(p.result_created) FROM postprocessing p JOIN images i USING (image_id) WHERE i.image_group = %(group)s),
    (SELECT max(m.merged_at) FROM merged_images m JOIN images i USING (image_id) WHERE i.image_group = %(group)s),
    (SELECT max(c.consensus_created) FROM consensus c JOIN images i USING (image_id)
      WHERE i.image_group = %(group)s))
