-- Monitoring views, for humans at psql and for `windmill-cli status`: per-service progress, job queue depths,
-- per-image completeness, recent failures and live workers. Every view reads through indexes: a status
-- refresh on a 100K-image collection must not scan every answer, and `image_completeness WHERE image_id = …`
-- touches one image's rows only.

-- Per-service counts and rates read (service, status[, result_created]) and the image: an index-only range
-- instead of the whole table.
CREATE INDEX results_service_status_created_idx ON results (service, status, result_created) INCLUDE (image_id);
-- Failures are few: a small partial index makes "recent failures" cheap however many answers there are.
CREATE INDEX results_failures_idx ON results (result_created) WHERE status IN ('error', 'timeout');
CREATE INDEX postprocessing_failures_idx ON postprocessing (result_created) WHERE status IN ('error', 'timeout');

-- A person box gets face and pose postprocessing: the merger's rule (windmill.roles.merger.postprocessing_for),
-- written once for SQL. The class of a box is its normalised emoji, or its label key when it has no emoji
-- (crop_key starts with the class).
CREATE FUNCTION is_person_box(p_merged_data jsonb, p_crop_key text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(p_merged_data->>'emoji', '') = '🧑'
        OR (coalesce(p_merged_data->>'emoji', '') = ''
            AND (p_crop_key LIKE 'person:%' OR coalesce(p_merged_data->'labels' ? 'person', false)))
$$;

-- Per service: its job-table tasks (queue_<service>; RabbitMQ depths are `windmill-cli status`'s business),
-- images answered, images whose latest answer failed, and successes per minute.
CREATE VIEW service_progress AS
SELECT s.name AS service,
       s.category,
       waiting.queued,
       running.running,
       done.images AS done,
       failed.images AS failed,
       rate.last_minute AS rate_1m,
       round(rate.last_hour / 60.0, 2) AS rate_1h,
       rate.last_success_at
  FROM services s
 CROSS JOIN LATERAL (
        -- queued = waiting to run: new, or failed and waiting for its retry.
        SELECT count(*) AS queued FROM jobs j
         WHERE j.queue = 'queue_' || s.name AND j.state IN ('queued', 'failed')) waiting
 CROSS JOIN LATERAL (
        SELECT count(*) AS running FROM jobs j
         WHERE j.queue = 'queue_' || s.name AND j.state = 'running') running
 CROSS JOIN LATERAL (
        SELECT count(DISTINCT r.image_id) AS images FROM results r
         WHERE r.service = s.name AND r.status = 'success') done
 CROSS JOIN LATERAL (
        -- Images whose latest row for the service is a failure (a later success or retry supersedes it).
        SELECT count(DISTINCT e.image_id) AS images FROM results e
         WHERE e.service = s.name AND e.status IN ('error', 'timeout')
           AND NOT EXISTS (SELECT 1 FROM results later
                            WHERE later.image_id = e.image_id AND later.service = e.service
                              AND (later.result_created, later.result_id) > (e.result_created, e.result_id))) failed
 CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE r.result_created > now() - interval '1 minute') AS last_minute,
               count(*) AS last_hour,
               max(r.result_created) AS last_success_at
          FROM results r
         WHERE r.service = s.name AND r.status = 'success' AND r.result_created > now() - interval '1 hour') rate;
COMMENT ON VIEW service_progress IS
    'Per service: job-table tasks queued/running, images answered (done), images whose latest answer failed, '
    'successes per minute over the last minute (rate_1m) and the last hour (rate_1h).';

-- Per job queue: how much waits, runs, and is dead, and how long the oldest job that could run has waited. Three
-- parts, one per partial index (claimable, running, dead): the done jobs, nearly all of the table, are never read.
CREATE VIEW queue_depths AS
SELECT queue,
       sum(queued)::bigint AS queued,
       sum(scheduled)::bigint AS scheduled,
       sum(retrying)::bigint AS retrying,
       sum(running)::bigint AS running,
       sum(expired)::bigint AS expired_leases,
       sum(dead)::bigint AS dead,
       round(extract(epoch FROM now() - min(oldest_due))::numeric, 1) AS oldest_age_s
  FROM (SELECT queue,
               count(*) FILTER (WHERE state = 'queued' AND run_after <= now()) AS queued,
               count(*) FILTER (WHERE state = 'queued' AND run_after > now()) AS scheduled,
               count(*) FILTER (WHERE state = 'failed') AS retrying,
               0 AS running, 0 AS expired, 0 AS dead,
               min(created_at) FILTER (WHERE run_after <= now()) AS oldest_due
          FROM jobs WHERE state IN ('queued', 'failed') GROUP BY queue
        UNION ALL
        SELECT queue, 0, 0, 0, count(*), count(*) FILTER (WHERE lease_expires_at < now()), 0, NULL
          FROM jobs WHERE state = 'running' GROUP BY queue
        UNION ALL
        SELECT queue, 0, 0, 0, 0, 0, count(*), NULL
          FROM jobs WHERE state = 'dead' GROUP BY queue) parts
 GROUP BY queue;
COMMENT ON VIEW queue_depths IS
    'Per job queue: queued (due now), scheduled (run_after in the future, e.g. the scheduler tick), retrying '
    '(failed, waiting for or past its backoff), running, expired leases, dead, and oldest_age_s: how long the '
    'oldest job that could run now has existed.';

-- Per image: which services answered or failed, its boxes and their postprocessing, caption scores, consensus
-- and pending jobs. Built from one image at a time (LATERAL, by index): cheap for one image, a full listing
-- of a large collection is for LIMIT and WHERE.
CREATE VIEW image_completeness AS
SELECT i.image_id,
       i.image_filename,
       i.image_group,
       answers.answered,
       answers.failed,
       missing.services AS missing,
       merged.merged_at,
       boxes.boxes,
       boxes.person_boxes,
       boxes.colors,
       boxes.face,
       boxes.pose,
       boxes.postprocessing_missing,
       captions.caption_scores,
       c.image_id IS NOT NULL AS consensus,
       c.consensus_created AS consensus_at,
       pending.jobs AS pending_jobs,
       (cardinality(missing.services) = 0 AND boxes.postprocessing_missing = 0 AND c.image_id IS NOT NULL
        AND pending.jobs = 0) AS complete
  FROM images i
 CROSS JOIN LATERAL (
        SELECT coalesce(array_agg(latest.service ORDER BY latest.service)
                            FILTER (WHERE latest.has_success), '{}') AS answered,
               coalesce(array_agg(latest.service ORDER BY latest.service)
                            FILTER (WHERE latest.status IN ('error', 'timeout')), '{}') AS failed,
               coalesce(array_agg(latest.service)
                            FILTER (WHERE latest.has_success OR latest.status IN ('error', 'timeout')), '{}')
                   AS settled
          FROM (SELECT DISTINCT ON (r.service) r.service, r.status,
                       bool_or(r.status = 'success') OVER (PARTITION BY r.service) AS has_success
                  FROM results r
                 WHERE r.image_id = i.image_id
                 ORDER BY r.service, r.result_created DESC, r.result_id DESC) latest) answers
 CROSS JOIN LATERAL (
        -- Primary services with no final answer (success, error or timeout) yet.
        SELECT coalesce(array_agg(s.name ORDER BY s.name), '{}') AS services
          FROM services s
         WHERE s.category = 'primary' AND s.name <> ALL (answers.settled)) missing
 CROSS JOIN LATERAL (
        SELECT count(*) AS boxes,
               count(*) FILTER (WHERE box.person) AS person_boxes,
               count(*) FILTER (WHERE box.colors) AS colors,
               count(*) FILTER (WHERE box.face) AS face,
               count(*) FILTER (WHERE box.pose) AS pose,
               (count(*) FILTER (WHERE NOT box.colors)
                + count(*) FILTER (WHERE box.person AND NOT box.face)
                + count(*) FILTER (WHERE box.person AND NOT box.pose)) AS postprocessing_missing
          FROM (SELECT is_person_box(mb.merged_data, mb.crop_key) AS person,
                       EXISTS (SELECT 1 FROM postprocessing p
                                WHERE p.merged_box_id = mb.merged_id AND p.service = 'colors') AS colors,
                       EXISTS (SELECT 1 FROM postprocessing p
                                WHERE p.merged_box_id = mb.merged_id AND p.service = 'face') AS face,
                       EXISTS (SELECT 1 FROM postprocessing p
                                WHERE p.merged_box_id = mb.merged_id AND p.service = 'pose') AS pose
                  FROM merged_boxes mb
                 WHERE mb.image_id = i.image_id) box) boxes
 CROSS JOIN LATERAL (
        SELECT coalesce(array_agg(p.service ORDER BY p.service), '{}') AS caption_scores
          FROM postprocessing p
         WHERE p.image_id = i.image_id AND p.service LIKE 'caption\_score\_%' AND p.merged_box_id IS NULL) captions
 CROSS JOIN LATERAL (
        SELECT count(*) AS jobs FROM jobs j
         WHERE j.image_id = i.image_id AND j.state IN ('queued', 'running', 'failed')) pending
  LEFT JOIN merged_images merged ON merged.image_id = i.image_id
  LEFT JOIN consensus c ON c.image_id = i.image_id;
COMMENT ON VIEW image_completeness IS
    'Per image: services answered / failed / missing (primary services without a final answer), boxes and their '
    'colors/face/pose rows, caption scores, consensus, pending jobs; complete when nothing is missing or pending.';

-- The last 24 hours of failures, newest first: failed answers and postprocessing, jobs waiting for a retry,
-- dead jobs. One shape for all, so a single `SELECT * FROM recent_failures LIMIT 20` tells the story.
CREATE VIEW recent_failures AS
SELECT failed_at, kind, source, image_id, state, reason, attempts, id
  FROM (SELECT r.result_created AS failed_at, 'result' AS kind, r.service AS source, r.image_id,
               r.status AS state, r.error_message AS reason, NULL::integer AS attempts, r.result_id AS id
          FROM results r
         WHERE r.status IN ('error', 'timeout') AND r.result_created > now() - interval '24 hours'
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
COMMENT ON VIEW recent_failures IS
    'Failures of the last 24 hours, newest first: error/timeout answers and postprocessing rows, jobs waiting '
    'for a retry (with their last error) and dead jobs.';

-- Workers that have not said they stopped, with their last heartbeat. A worker beats every few seconds
-- (windmill.worker.runtime): one silent for 30 s is presumed dead (killed, or its machine is gone), and after a
-- day of silence it is left out (a killed worker never writes its stop).
CREATE VIEW live_workers AS
SELECT w.worker_id,
       w.role,
       w.service,
       w.hostname,
       w.pid,
       w.started_at,
       w.heartbeat_at,
       round(extract(epoch FROM now() - w.heartbeat_at)::numeric, 1) AS heartbeat_age_s,
       w.heartbeat_at > now() - interval '30 seconds' AS alive,
       coalesce(held.jobs, 0) AS running_jobs,
       w.jobs_done,
       w.jobs_failed
  FROM workers w
  LEFT JOIN (SELECT lease_owner, count(*) AS jobs FROM jobs WHERE state = 'running' GROUP BY lease_owner) held
         ON held.lease_owner = w.worker_id
 WHERE w.stopped_at IS NULL AND w.heartbeat_at > now() - interval '1 day';
COMMENT ON VIEW live_workers IS
    'Workers not stopped (and heard from within a day): last heartbeat and its age, alive (a heartbeat in the '
    'last 30 s), jobs they hold.';
