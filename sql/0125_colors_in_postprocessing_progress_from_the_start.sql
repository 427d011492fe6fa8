-- `status` and the dashboard showed no colors row under Postprocessing until the first crop's colours were stored:
-- the view's services came from the catalog's spatial_only and postprocessing categories (face, pose,
-- caption_score), and colors, a primary service, entered only with its first counted row. The box services are
-- the ones postprocessing rows may hold (sql/0001's CHECK: colors, face, pose), named here as that CHECK names them.
CREATE OR REPLACE VIEW postprocessing_progress AS
SELECT s.service,
       coalesce(depth.queued + depth.scheduled + depth.retrying, 0) AS queued,
       coalesce(depth.running, 0) AS running,
       coalesce(counted.done, 0) AS done,
       coalesce(counted.failed, 0) AS failed,
       counted.last_answer_at,
       coalesce(depth.estimated, false) AS estimated
  FROM (VALUES ('colors'), ('face'), ('pose')
        UNION
        SELECT name FROM services WHERE category IN ('spatial_only', 'postprocessing')
        UNION
        SELECT service FROM postprocessing_counts) s (service)
  LEFT JOIN queue_depth_rows() depth
         ON depth.queue = CASE s.service WHEN 'caption_score' THEN 'caption_score' ELSE 'postprocess_' || s.service END
  LEFT JOIN postprocessing_counts counted ON counted.service = s.service;
