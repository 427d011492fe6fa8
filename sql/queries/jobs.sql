-- name: claim_round_trip
-- A claim loop's round trip, one statement: mark %(done)s done (only the jobs this worker still holds: a job whose
-- lease was lost belongs to another worker now), and lease, for each of the worker's lanes, up to its limit of
-- claimable jobs of its queues, oldest first, plus running jobs whose lease lapsed (their worker died; one granted
-- before the server started lapses no earlier than one lease, this worker's, after the start: sql/0135). An expired
-- job that was on its last attempt runs it once more, so that its outcome is recorded; one whose last attempt had
-- expired already is a poison input, `poison`: its role records its failure without running it; one whose recording
-- expired goes dead (sql/0126, sql/0131: expired_lease_gives_up, expired_lease_poisons, expired_lease_error,
-- job_is_poison). %(lanes)s stands for claim_one_queue_lanes and each lane of
-- several queues' claim_lane_of_queues, %(claimable)s for their candidates joined by UNION (windmill/jobs/queue.py,
-- round_trip_query, writes them in).
-- One statement: pipelined as a completion and a statement per lane (one implicit transaction already), each
-- statement cost the client and the server their fixed work, and the claim loop of a worker with three lanes spent
-- two fifths of its CPU there. A job of
-- %(done)s is never taken as expired in the same statement: a row changed twice by one statement keeps either
-- change. The candidates are read as an array: the planner, which costs each lane's LIMIT parameter at a tenth of
-- the table, would otherwise join them by reading the whole job table (a hash join); an array of ids it looks up by
-- the primary key. `waited`: the job had waited in a backed-up queue, so an enqueue may have stayed silent counting on it
-- (sql/0098: the worker then claims once more shortly after).
WITH done AS (
    UPDATE jobs
       SET state = 'done', lease_owner = NULL, lease_expires_at = NULL, updated_at = coalesce(%(now)s, now())
     WHERE id = ANY(%(done)s) AND state = 'running' AND lease_owner = %(worker)s
), %(lanes)s, claimed AS (
    UPDATE jobs
       SET state = CASE WHEN jobs.state = 'running'
                             AND expired_lease_gives_up(jobs.attempts, jobs.max_attempts, jobs.last_error)
                        THEN 'dead'::job_state ELSE 'running'::job_state END,
           attempts = CASE WHEN jobs.state = 'running' AND jobs.attempts >= jobs.max_attempts
                           THEN jobs.attempts ELSE jobs.attempts + 1 END,
           last_error = CASE WHEN jobs.state = 'running'
                             THEN expired_lease_error(jobs.lease_owner, jobs.attempts, jobs.max_attempts,
                                                      jobs.last_error)
                             ELSE jobs.last_error END,
           lease_owner = %(worker)s,
           lease_expires_at = coalesce(%(now)s, now()) + %(lease)s,
           updated_at = coalesce(%(now)s, now())
     WHERE jobs.id = ANY(ARRAY(%(claimable)s))
    RETURNING jobs.id, jobs.queue, jobs.payload, jobs.image_id, jobs.state, jobs.attempts,
              jobs.max_attempts, jobs.dedupe_key, jobs.last_error,
              job_waited(jobs.run_after, jobs.created_at, coalesce(%(now)s, now()), job_backlog_wait() / 2) AS waited,
              job_is_poison(jobs.attempts, jobs.max_attempts, jobs.last_error) AS poison
)
SELECT id, queue, payload, image_id, attempts, max_attempts, dedupe_key, last_error, waited, poison
  FROM claimed WHERE state = 'running'
 ORDER BY id

-- name: claim_one_queue_lanes
-- claim_round_trip's lanes of one queue each, when a worker has several (a service worker's: one per service), those
-- asking only: each lane's queue and the most it takes, as arrays (%(lane_queues)s, %(lane_limits)s), read by
-- claim_one_queue_lane_ids. As parameters, not a block per lane with its queue written in: the executor sets up
-- every block of a statement at each execution, asking or not, and eleven lanes' blocks were 9 % of PostgreSQL's CPU
-- samples in the service stage; a text per set of asking lanes would be hundreds of texts (windmill/jobs/queue.py,
-- round_trip_query, says more).
one_queue_lanes AS (
    SELECT queue, wanted FROM unnest(%(lane_queues)s::text[], %(lane_limits)s::integer[]) AS lane (queue, wanted)
)

-- name: claim_one_queue_lane_ids
-- The candidates of claim_one_queue_lanes, each lane's own. The queue as a range of one value, in the order of
-- jobs_claimable_idx: with `queue = ... ORDER BY id` the planner could read jobs_claimable_order_idx in id order and
-- skip every other queue's waiting job on the way (a merge claim beside 300,000 waiting service tasks and a long
-- done history of merges: 28 ms). Only jobs_claimable_idx gives this order without sorting every waiting job of the
-- queue (the same form as sql/0098's look-up); as the inner side of a nested loop, it is read once per lane, from
-- the lane's queue on, and stops at the lane's limit (tests/test_job_queue.py shows the generic plans).
SELECT ready.id FROM one_queue_lanes AS lane CROSS JOIN LATERAL (
    SELECT id FROM jobs
     WHERE state IN ('queued', 'failed') AND queue >= lane.queue AND queue <= lane.queue
       AND run_after <= coalesce(%(now)s, now())
     ORDER BY queue, id
     LIMIT lane.wanted
       FOR UPDATE SKIP LOCKED
) AS ready
UNION
SELECT expired.id FROM one_queue_lanes AS lane CROSS JOIN LATERAL (
    SELECT id FROM jobs
     WHERE state = 'running' AND queue = lane.queue
       AND lease_lapsed(lease_expires_at, updated_at, coalesce(%(now)s, now()), %(lease)s) AND NOT id = ANY(%(done)s)
     ORDER BY lease_expires_at
     LIMIT lane.wanted
       FOR UPDATE SKIP LOCKED
) AS expired

-- name: claim_lane_one_queue
-- claim_round_trip's block for the lane of one queue of a worker that has no other (its %(lane)s-th): its queue and
-- the clock written in as literals, the limit a parameter; a block costs less than claim_one_queue_lanes' arrays
-- when it is the only one. The queue as a range of one value, as claim_one_queue_lane_ids reads it and says why
-- (tests/test_sql_home.py keeps the two alike).
ready_%(lane)s AS (
    SELECT id FROM jobs
     WHERE state IN ('queued', 'failed') AND queue >= %(queue)s AND queue <= %(queue)s
       AND run_after <= coalesce(%(now)s, now())
     ORDER BY queue, id
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), expired_%(lane)s AS (
    SELECT id FROM jobs
     WHERE state = 'running' AND queue = %(queue)s
       AND lease_lapsed(lease_expires_at, updated_at, coalesce(%(now)s, now()), %(lease)s) AND NOT id = ANY(%(done)s)
     ORDER BY lease_expires_at
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
)

-- name: claim_lane_of_queues
-- claim_round_trip's block for a lane of several queues (its %(lane)s-th; queue = ANY(...), written in as literals
-- with the clock, its limit a parameter): the scan follows jobs_claimable_order_idx (id order across the queues);
-- claim_one_queue_lane_ids reads a lane of one queue (tests/test_sql_home.py keeps the two alike).
ready_%(lane)s AS (
    SELECT id FROM jobs
     WHERE state IN ('queued', 'failed') AND queue = ANY(%(queues)s)
       AND run_after <= coalesce(%(now)s, now())
     ORDER BY id
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), expired_%(lane)s AS (
    SELECT id FROM jobs
     WHERE state = 'running' AND queue = ANY(%(queues)s)
       AND lease_lapsed(lease_expires_at, updated_at, coalesce(%(now)s, now()), %(lease)s) AND NOT id = ANY(%(done)s)
     ORDER BY lease_expires_at
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
)

-- name: claim_lane_ids
-- The candidates of a lane of several queues in claim_round_trip.
SELECT id FROM ready_%(lane)s UNION SELECT id FROM expired_%(lane)s

-- name: due_job_waiting
-- Is a job of %(queues)s due and still waiting? A plain read: it sees a job whose row a claim's SKIP LOCKED passed by
-- (windmill/worker/claim_state.py, LaneState.left_behind). Each queue read as claim_one_queue_lane_ids reads it, a
-- range of one value in the order of jobs_claimable_idx: written as `queue = ANY(...)`, the claim loop's generic
-- plan read the whole jobs table, done history and every other queue's backlog included (0.9 ms a read beside 300
-- images' jobs; tests/test_job_queue.py shows the plan).
SELECT EXISTS (SELECT 1 FROM unnest(%(queues)s::text[]) AS lane(queue) CROSS JOIN LATERAL (
    SELECT 1 FROM jobs
     WHERE state IN ('queued', 'failed') AND queue >= lane.queue AND queue <= lane.queue AND run_after <= now()
     ORDER BY queue, id
     LIMIT 1
) AS due)

-- name: generic_plans_for_this_session
-- A claimer's connection runs nothing but claim round trips, on their generic plans from the first execution
-- (windmill/jobs/queue.py, Claimer, says why that is safe there).
SET plan_cache_mode = force_generic_plan

-- name: generic_plans_for_this_transaction
-- A hand-off's claim on its generic plan, as a claimer's own connection runs it (Claimer.write_and_hand_off); the
-- write before it, and its triggers, keep the server's own choice (default_plans_for_this_transaction).
SET LOCAL plan_cache_mode = force_generic_plan

-- name: default_plans_for_this_transaction
-- Back to the server's own choice of plans for the rest of a hand-off's transaction (its deferred triggers run at
-- its commit).
SET LOCAL plan_cache_mode TO DEFAULT

-- name: discard_plans
-- Drop the session's plans (its statements stay prepared): the next executions plan from the table as it is now.
DISCARD PLANS

-- name: complete_jobs
-- Mark jobs done, only those this worker still holds (a job whose lease was lost belongs to another worker now).
UPDATE jobs
   SET state = 'done', lease_owner = NULL, lease_expires_at = NULL, updated_at = coalesce(%(now)s, now())
 WHERE id = ANY(%(ids)s) AND state = 'running' AND lease_owner = %(worker)s

-- name: fail_job
-- Record a failed attempt: back to the queue after the backoff, or dead when attempts are used up
-- or the error is permanent. An attempt that does not count (its handler could not reach the database:
-- PostgreSQL being away is not the job's failure) goes back to the queue and gives its attempt back.
UPDATE jobs
   SET state = CASE WHEN %(counted)s AND (%(permanent)s OR attempts >= max_attempts) THEN 'dead'::job_state
                    ELSE 'failed'::job_state END,
       attempts = CASE WHEN %(counted)s THEN attempts ELSE greatest(attempts - 1, 0) END,
       run_after = coalesce(%(now)s, now()) + %(backoff)s,
       last_error = %(error)s,
       lease_owner = NULL,
       lease_expires_at = NULL,
       updated_at = coalesce(%(now)s, now())
 WHERE id = %(id)s AND state = 'running' AND lease_owner = %(worker)s
RETURNING state

-- name: renew_leases
-- Extend the leases of the jobs this worker is still running; returns the ids it still holds.
UPDATE jobs
   SET lease_expires_at = coalesce(%(now)s, now()) + %(lease)s
 WHERE id = ANY(%(ids)s) AND state = 'running' AND lease_owner = %(worker)s
RETURNING id

-- name: enqueue_job
-- Queue one job unless an identical one is waiting; returns its id or NULL when deduplicated.
SELECT enqueue_job(%(queue)s, %(image_id)s, %(payload)s, %(dedupe_key)s, %(max_attempts)s,
                   coalesce(%(run_after)s, now())) AS id

-- name: enqueue_jobs
-- Queue many jobs in one statement, their ids in the order given (a worker serving several queues claims in id
-- order, so one image's tasks queued together are run together); duplicates of waiting jobs are skipped.
INSERT INTO jobs (queue, image_id, payload, dedupe_key, max_attempts)
SELECT queue, image_id, payload, dedupe_key, max_attempts
  FROM unnest(%(queues)s::text[], %(image_ids)s::bigint[], %(payloads)s::jsonb[], %(dedupe_keys)s::text[],
              %(max_attempts)s::integer[]) WITH ORDINALITY
       AS batch (queue, image_id, payload, dedupe_key, max_attempts, position)
 ORDER BY position
ON CONFLICT (queue, dedupe_key) WHERE state = 'queued' DO NOTHING

-- name: retry_dead_jobs
-- Put dead jobs back in the queue with fresh attempts; one per dedupe key, none that is already waiting.
WITH picked AS (
    SELECT DISTINCT ON (queue, coalesce(dedupe_key, id::text)) id
      FROM jobs
     WHERE state = 'dead'
       AND (%(queue)s::text IS NULL OR queue = %(queue)s)
       AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s))
       AND NOT EXISTS (SELECT 1 FROM jobs waiting
                        WHERE waiting.state = 'queued' AND waiting.queue = jobs.queue
                          AND waiting.dedupe_key = jobs.dedupe_key)
       -- A service task whose pair has another task in flight stays dead (the unique index of sql/0020).
       AND NOT (jobs.payload ? 'task_id' AND EXISTS (
                SELECT 1 FROM jobs other
                 WHERE other.queue = jobs.queue AND other.image_id = jobs.image_id
                   AND other.state IN ('queued', 'running', 'failed') AND other.payload ? 'task_id'))
     ORDER BY queue, coalesce(dedupe_key, id::text), id DESC
)
UPDATE jobs
   SET state = 'queued', attempts = 0, run_after = now(), updated_at = now(),
       last_error = 'retried after: ' || coalesce(last_error, '')
  FROM picked
 WHERE jobs.id = picked.id
RETURNING jobs.id

-- name: job_states
-- The state and queue of each of these jobs that exists (why `jobs retry --id` did not retry them).
SELECT id, state::text, queue FROM jobs WHERE id = ANY(%(ids)s)

-- name: list_jobs
-- Jobs by state and queue, newest first.
SELECT id, queue, state::text AS state, image_id, attempts, max_attempts, run_after, lease_owner,
       lease_expires_at, last_error, payload, created_at, updated_at
  FROM jobs
 WHERE (%(state)s::job_state IS NULL OR state = %(state)s::job_state)
   AND (%(queue)s::text IS NULL OR queue = %(queue)s)
 ORDER BY id DESC
 LIMIT %(limit)s

-- name: queue_depths
-- Per queue and state: how many jobs, and the age of the oldest waiting one.
SELECT queue, state::text AS state, count(*) AS jobs,
       extract(epoch FROM now() - min(created_at)) AS oldest_age_s
  FROM jobs
 WHERE state <> 'done'
 GROUP BY queue, state
 ORDER BY queue, state

-- name: analyze_jobs
-- Refresh the planner's statistics of the job table (after a bulk enqueue).
ANALYZE jobs

-- name: notify_jobs
-- Wake every idle worker for every queue (the wake-all channel of sql/0096).
SELECT pg_notify('windmill_jobs', '')

-- name: listen_job_queues
-- A worker's wake-up lines: the wake-all channel and its queues' own (sql/0096); each queue with its channel.
SELECT queue, channel FROM listen_job_queues(%(queues)s::text[])
