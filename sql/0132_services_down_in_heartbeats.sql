-- A worker finds an Animal Farm service down (connection refused, HTTP 502/503/504/429) and its calls wait for it
-- (windmill/farm/outages.py); only its log and its metrics said so, and `status` showed the service's tasks aging
-- with no reason. Each heartbeat now carries what its process finds down, {service: {seconds, reason}} at the beat
-- (NULL while every service answers), and live_workers shows it (a column added at the end: the view's readers,
-- the monitor role's dashboard among them, read no table of workers), so `status` names the services down and why.
ALTER TABLE workers ADD COLUMN services_down jsonb;

CREATE OR REPLACE VIEW live_workers AS
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
       w.jobs_failed,
       w.services_down
  FROM workers w
  LEFT JOIN (SELECT lease_owner, count(*) AS jobs FROM jobs WHERE state = 'running' GROUP BY lease_owner) held
         ON held.lease_owner = w.worker_id
 WHERE w.stopped_at IS NULL AND w.heartbeat_at > now() - interval '1 day';
COMMENT ON VIEW live_workers IS
    'Workers not stopped (and heard from within a day): last heartbeat and its age, alive (a heartbeat in the '
    'last 30 s), jobs they hold, the services they find down ({service: {seconds, reason}} at the heartbeat).';
