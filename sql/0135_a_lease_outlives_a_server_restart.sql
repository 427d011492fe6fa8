-- A lease that ran out while PostgreSQL was down was taken for its worker's death. A worker renews the leases of
-- the jobs it runs every few seconds (at most a third of the lease); while the server is away it cannot, and after
-- an outage longer than the lease (30 s by default) every job in flight had an expired lease when the server came
-- back: the first claim took them all to run again, beside the live workers that were still running them and
-- reconnecting, and counted an attempt against each (two such outages on a job's last attempt made it a poison,
-- its failure recorded without running it). Now the server's start renews every lease once: a lease granted before
-- it (the job's updated_at, which its claim sets and a renewal leaves alone, before pg_postmaster_start_time())
-- lapses no earlier than one lease after the start, the claiming worker's (time for a live worker's pool to
-- reconnect, at most 16 s after the server is back (windmill/db/connect.py), and for its next heartbeat to renew
-- the lease), and the periodic pass's sweep below waits a minute. A worker that died before or with the outage has
-- its jobs taken back that much later. A lease granted since the start lapses when it expires, as before. What
-- this cannot tell apart is the same as before when the server stays up: a worker that lost the database (a
-- network cut) for longer than its lease is taken for dead.

-- Whether a running job's lease has lapsed at p_now: expired, and granted since the server started or the server
-- up for p_grace. SQL, so that it is inlined: the expiry stays an index condition (jobs_running_lease_idx).
CREATE FUNCTION lease_lapsed(p_expires timestamptz, p_leased_at timestamptz, p_now timestamptz, p_grace interval)
RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT p_expires < p_now
       AND (p_leased_at >= pg_postmaster_start_time() OR p_now >= pg_postmaster_start_time() + p_grace)
$$;

-- Queue the jobs that repair stale products of the next page of images, and return jobs with expired leases to the
-- queue; one row per queue that got jobs. p_limit bounds each queue, p_page the images looked at. search_path is
-- fixed to the schema the migration runs in: pg_cron calls it with its own.
CREATE OR REPLACE FUNCTION backfill(p_limit integer DEFAULT 1000, p_page integer DEFAULT 1000)
RETURNS TABLE (queue text, queued integer)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    n integer;
    page_after bigint;
    page_upto bigint;
    page_images integer;
    queues text[];
    counts integer[];
    more_work boolean;
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'backfill: p_limit must be at least 1, not %', p_limit USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_page IS NULL OR p_page < 1 THEN
        RAISE EXCEPTION 'backfill: p_page must be at least 1, not %', p_page USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Two backfills at once (pg_cron and a scheduler worker) would only do the same work twice.
    IF NOT pg_try_advisory_xact_lock(1464421954) THEN
        RAISE NOTICE 'another backfill is running; this one does nothing';
        RETURN;
    END IF;

    -- Jobs whose worker died: back to the queue at once rather than when the next claim notices, by the claim
    -- query's rules (lease_lapsed, expired_lease_gives_up): one whose last attempt expired runs once more, to record
    -- its outcome.
    WITH expired AS (
        SELECT j.id FROM jobs j
         WHERE j.state = 'running' AND lease_lapsed(j.lease_expires_at, j.updated_at, now(), interval '1 minute')
         ORDER BY j.lease_expires_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ), repaired AS (
        UPDATE jobs j
           SET state = CASE WHEN expired_lease_gives_up(j.attempts, j.max_attempts, j.last_error)
                            THEN 'dead'::job_state ELSE 'failed'::job_state END,
               -- The claim counts the next run as an attempt: the last one's stays the last.
               attempts = CASE WHEN expired_lease_gives_up(j.attempts, j.max_attempts, j.last_error) THEN j.attempts
                               WHEN j.attempts >= j.max_attempts THEN j.max_attempts - 1 ELSE j.attempts END,
               run_after = now(),
               last_error = expired_lease_error(j.lease_owner, j.attempts, j.max_attempts, j.last_error),
               lease_owner = NULL,
               lease_expires_at = NULL,
               updated_at = now()
          FROM expired
         WHERE j.id = expired.id
        RETURNING j.state
    )
    SELECT count(*) FILTER (WHERE repaired.state = 'failed') INTO n FROM repaired;
    IF n > 0 THEN
        queue := 'expired_leases'; queued := n; RETURN NEXT;
    END IF;

    -- The page: the next p_page images after the saved position.
    SELECT b.after_image_id INTO page_after FROM backfill_state b FOR UPDATE;
    SELECT max(page.image_id), count(*) INTO page_upto, page_images
      FROM (SELECT i.image_id FROM images i WHERE i.image_id > page_after ORDER BY i.image_id LIMIT p_page) page;

    IF page_images > 0 THEN
        WITH wanted AS MATERIALIZED (
            SELECT stale AS job, stale.queue,
                   row_number() OVER (PARTITION BY stale.queue ORDER BY stale.image_id, stale.dedupe_key) AS nth
              FROM stale_products(page_after, page_upto) AS stale
             WHERE NOT job_pending(stale)
        ), per_queue AS (
            SELECT w.queue, count(enqueue(w.job)) FILTER (WHERE w.nth <= p_limit)::integer AS n,
                   max(w.nth) > p_limit AS more
              FROM wanted w
             GROUP BY w.queue
        )
        SELECT array_agg(pq.queue ORDER BY pq.queue) FILTER (WHERE pq.n > 0),
               array_agg(pq.n ORDER BY pq.queue) FILTER (WHERE pq.n > 0),
               coalesce(bool_or(pq.more), false)
          INTO queues, counts, more_work
          FROM per_queue pq;
        FOR i IN 1..coalesce(cardinality(queues), 0) LOOP
            queue := queues[i]; queued := counts[i]; RETURN NEXT;
        END LOOP;
    END IF;

    -- Move on, unless this page still has work beyond p_limit; a short page ends the lap.
    IF NOT coalesce(more_work, false) THEN
        UPDATE backfill_state
           SET after_image_id = CASE WHEN page_images < p_page THEN 0 ELSE page_upto END,
               laps = laps + CASE WHEN page_images < p_page THEN 1 ELSE 0 END,
               updated_at = now();
    END IF;
END
$$;
COMMENT ON FUNCTION backfill(integer, integer) IS
    'Queue the jobs that repair stale merged boxes, consensus, postprocessing and caption scores of the next page '
    'of p_page images (compared by the rows each product records), at most p_limit per queue, and return jobs with '
    'expired leases to the queue. Safe to run any time; two at once: the second does nothing.';
