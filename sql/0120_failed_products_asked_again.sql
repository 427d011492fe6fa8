-- Postprocessing and caption scores that ended in an error (or a timeout) are kept as those rows, and a row is what
-- the backfill looks for (sql/0115): a box whose face call failed on every attempt, because the service was down or
-- the image's file was missing for a while, was never asked again once the cause was put right, and backfill said
-- there was nothing to repair. `windmill-cli backfill --failed` calls this: up to p_limit such rows go, and the
-- jobs that write them are queued again (one per image and service, as a merge queues them; a caption score per
-- image and caption service). The rows are read oldest first and locked, so two runs at once take different ones.
CREATE FUNCTION retry_failed_products(p_limit integer) RETURNS TABLE (queue text, queued bigint)
LANGUAGE sql AS $$
    WITH failed AS (
        SELECT p.postprocessing_id
          FROM postprocessing p
         WHERE p.status IN ('error', 'timeout')
         ORDER BY p.postprocessing_id
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM postprocessing p
         USING failed f
         WHERE p.postprocessing_id = f.postprocessing_id
        RETURNING p.image_id, p.merged_box_id, p.service
    ), wanted AS (
        SELECT DISTINCT g.image_id, g.merged_box_id IS NULL AS caption, g.service
          FROM gone g
    ), jobs AS (
        SELECT CASE WHEN w.caption THEN caption_score_job(w.image_id, substr(w.service, length('caption_score_') + 1))
                    ELSE postprocess_job(w.image_id, w.service) END AS job
          FROM wanted w
    )
    SELECT (j.job).queue, count(enqueue(j.job))
      FROM jobs j
     GROUP BY (j.job).queue
     ORDER BY 1
$$;
