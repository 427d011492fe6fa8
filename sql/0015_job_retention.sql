-- Job retention: `done` jobs are history, about seven per image; kept forever they would make the job table grow
-- with the collection instead of with the work in flight (DESIGN rule 8). Done jobs older than a retention are
-- deleted in small batches by the periodic pass (pg_cron or the scheduler role) and by `windmill-cli jobs prune`.
-- Dead jobs stay until someone retries them (`jobs retry`) or prunes them explicitly (`jobs prune --dead`); a
-- pruned dead job no longer covers its work, so the backfill queues it again if its product is still stale.

-- The prune reads only old done jobs, through this index (the claim's indexes cover unfinished jobs only).
CREATE INDEX jobs_done_idx ON jobs (updated_at) WHERE state = 'done';

-- One batch: at most p_batch done jobs (and as many dead ones with p_dead) last changed more than p_older_than
-- ago. SECURITY DEFINER: workers may delete finished history this way, not jobs at large (they have no DELETE on
-- jobs). Rows another transaction holds are skipped, never waited for.
CREATE FUNCTION prune_jobs_batch(p_older_than interval, p_dead boolean, p_batch integer) RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = windmill, pg_temp AS $$
    WITH done_jobs AS (
        SELECT id FROM jobs
         WHERE state = 'done' AND updated_at < now() - p_older_than
         ORDER BY updated_at
         LIMIT p_batch
           FOR UPDATE SKIP LOCKED
    ), dead_jobs AS (
        SELECT id FROM jobs
         WHERE p_dead AND state = 'dead' AND updated_at < now() - p_older_than
         LIMIT p_batch
           FOR UPDATE SKIP LOCKED
    ), deleted AS (
        DELETE FROM jobs
         WHERE id IN (SELECT id FROM done_jobs UNION ALL SELECT id FROM dead_jobs)
        RETURNING 1
    )
    SELECT count(*)::integer FROM deleted
$$;

-- Procedures that commit between batches cannot carry SET search_path (PostgreSQL refuses transaction control
-- then), so they call the schema's functions by their full name; migrations always run in schema windmill
-- (windmill/db/migrations.py SCHEMA). They commit, so call them outside a transaction block (autocommit).

-- Delete old done (and with p_dead, dead) jobs, a batch per transaction, until a batch comes back short or
-- p_max_batches were deleted (NULL: no cap); `pruned` returns how many.
CREATE PROCEDURE prune_jobs(p_older_than interval, p_dead boolean DEFAULT false, p_batch integer DEFAULT 1000,
                            p_max_batches integer DEFAULT NULL, INOUT pruned bigint DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
    batches integer := 0;
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'prune_jobs: p_older_than must be zero or more, not %', p_older_than
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_batch IS NULL OR p_batch < 1 THEN
        RAISE EXCEPTION 'prune_jobs: p_batch must be at least 1, not %', p_batch USING ERRCODE = 'invalid_parameter_value';
    END IF;
    pruned := 0;
    LOOP
        n := windmill.prune_jobs_batch(p_older_than, coalesce(p_dead, false), p_batch);
        pruned := pruned + n;
        batches := batches + 1;
        COMMIT;
        EXIT WHEN n < p_batch OR batches >= coalesce(p_max_batches, batches + 1);
    END LOOP;
END $$;

-- What pg_cron and the scheduler role run every period: one backfill page (its own transaction), then the
-- retention (at most 100 batches, so that a pass after a long pause stays bounded; the next pass goes on).
-- `queued` returns what the backfill queued per queue, `pruned` how many jobs were deleted.
CREATE PROCEDURE scheduled_pass(p_page integer DEFAULT 1000, p_retention interval DEFAULT interval '1 hour',
                                p_limit integer DEFAULT 1000, INOUT queued jsonb DEFAULT NULL,
                                INOUT pruned bigint DEFAULT NULL)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT coalesce(jsonb_object_agg(b.queue, b.queued), '{}') INTO queued FROM windmill.backfill(p_limit, p_page) b;
    COMMIT;
    CALL windmill.prune_jobs(p_retention, false, 1000, 100, pruned);
END $$;
