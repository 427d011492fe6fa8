-- recent_failures showed every error answer of the last day, also those a later answer of the same image and
-- service had put right (a resubmit, a retry through the dead-letter queue): after an outage, the healed failures
-- filled status's newest ten and hid the ones still standing, though the README promises that "what stays is
-- what still needs a person". An error answer now shows only while it is its pair's latest answer (the rule of
-- sql/0060's pair_failed); the pair's latest answer is one look-up in results_image_service_idx (a LIMIT keeps
-- the planner from joining against every answer). The other kinds already leave when healed: a postprocessing row
-- asked again is deleted, a job that succeeds is done.
CREATE OR REPLACE VIEW recent_failures AS
SELECT failed_at, kind, source, image_id, state, reason, attempts, id
  FROM (SELECT r.result_created AS failed_at, 'result' AS kind, r.service AS source, r.image_id,
               r.status AS state, r.error_message AS reason, NULL::integer AS attempts, r.result_id AS id
          FROM results r
         WHERE r.status IN ('error', 'timeout') AND r.result_created > now() - interval '24 hours'
           AND (r.result_created, r.result_id) = (
                   SELECT latest.result_created, latest.result_id FROM results latest
                    WHERE latest.image_id = r.image_id AND latest.service = r.service
                    ORDER BY latest.result_created DESC, latest.result_id DESC
                    LIMIT 1)
        UNION ALL
        SELECT p.result_created, 'postprocessing', p.service, p.image_id, p.status, p.error_message, NULL,
               p.postprocessing_id
          FROM postprocessing p
         WHERE p.status IN ('error', 'timeout') AND p.result_created > now() - interval '24 hours'
        UNION ALL
        SELECT j.updated_at, 'job', j.queue, j.image_id, j.state::text, j.last_error, j.attempts, j.id
          FROM jobs j
         WHERE j.state IN ('queued', 'failed') AND j.last_error IS NOT NULL
           AND j.updated_at > now() - interval '24 hours'
        UNION ALL
        SELECT j.updated_at, 'job', j.queue, j.image_id, j.state::text, j.last_error, j.attempts, j.id
          FROM jobs j
         WHERE j.state = 'dead' AND j.updated_at > now() - interval '24 hours') failures
 ORDER BY failed_at DESC, kind, id DESC;
