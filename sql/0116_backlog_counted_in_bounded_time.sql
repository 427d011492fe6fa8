-- Queue depths and the ledger's tasks in flight, counted in bounded time (issue 13 item 4: status in constant time).
--
-- Why. The queue_depths view (sql/0007) and status' count of submit's ledger (monitor_tasks_in_flight) read every
-- waiting task: with 300,000 images submitted and not yet answered (3.3M jobs, or 3.3M ledger entries) `status`
-- took 4 s, about 2 minutes at ten million images, and a metrics scrape (2 s statement timeout) reported the
-- database as down exactly when an operator needs the figures.
--
-- Now a queue's waiting tasks are counted exactly up to backlog_exact_cap() (1,000, through the queue's partial
-- index); past it they are estimated from a sample of about 500 pages of the table (TABLESAMPLE SYSTEM: whole pages
-- drawn at random, the count scaled by 100 / the percentage drawn), never below the cap, and the row says `estimated`.
-- Running jobs and expired leases (bounded by the workers) stay exact, and so does the age of each queue's oldest
-- due job or entry, read from the head of its index. The queues are found by a loose index scan (one probe per
-- queue). A queue's waiting jobs are read as the range of one queue value in jobs_claimable_idx's order (queue, id),
-- as the claim does (sql/queries/jobs.sql): with `queue = ... ORDER BY id` the planner reads
-- jobs_claimable_order_idx from the start and skips every other queue's jobs, eleven entries read for each counted
-- one, and all of them for a small queue behind a backlog (five merge jobs behind 3.3M service tasks: 0.65 s). And custom plans only (plan_cache_mode): on a generic plan the loose scan's
-- `queue > $1` reads as a third of the table, and from the second call on the function took 0.5 s. No bitmap scans,
-- sorts or sequential scans: with statistics a bulk submit has outrun (or a table emptied since they were taken)
-- the planner takes a queue's range for a few rows and reads all of it to sort, where the index's own order stops
-- at the cap (a test counts the index entries read). SECURITY DEFINER: the monitor login reads them through the views, without SELECT on the job table.
--
-- recent_failures' job branches (jobs waiting for a retry with their last error, dead jobs, of the last 24 hours)
-- read every waiting job to find the few with an error (0.3 s at 3.3M queued): two partial indexes hold only those
-- rows, by time, so they cost a write only to a job that failed.
CREATE INDEX jobs_waiting_with_error_idx ON jobs (updated_at)
    WHERE state IN ('queued', 'failed') AND last_error IS NOT NULL;
CREATE INDEX jobs_dead_by_time_idx ON jobs (updated_at) WHERE state = 'dead';

CREATE FUNCTION backlog_exact_cap() RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 1000 $$;

-- TABLESAMPLE SYSTEM's percentage for about 500 of a table's pages, from its size now (not from statistics that a
-- bulk submit has outrun before autovacuum analyzes it).
CREATE FUNCTION backlog_sample_percent(p_table regclass) RETURNS real LANGUAGE sql STABLE AS $$
    SELECT least(100.0, 100.0 * 500 / greatest(pg_relation_size(p_table) / current_setting('block_size')::bigint, 1))::real
$$;

CREATE FUNCTION queue_depth_rows()
RETURNS TABLE (queue text, queued bigint, scheduled bigint, retrying bigint, running bigint, expired_leases bigint,
               dead bigint, oldest_age_s numeric, estimated boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = windmill, pg_temp SET plan_cache_mode = force_custom_plan
    SET enable_bitmapscan = off SET enable_sort = off SET enable_seqscan = off AS $$
DECLARE
    cap constant integer := backlog_exact_cap();
    queues text[];
    next_queue text;
    sample jsonb;  -- per queue [due, scheduled, failed, dead] in the sample, scaled to the table; drawn once
    percent real;
    counted jsonb;
BEGIN
    -- Every queue with a claimable or dead job (a probe of each partial index per queue), or a running one.
    next_queue := (SELECT min(j.queue) FROM jobs j WHERE j.state IN ('queued', 'failed'));
    WHILE next_queue IS NOT NULL LOOP
        queues := queues || next_queue;
        next_queue := (SELECT min(j.queue) FROM jobs j WHERE j.state IN ('queued', 'failed') AND j.queue > next_queue);
    END LOOP;
    next_queue := (SELECT min(j.queue) FROM jobs j WHERE j.state = 'dead');
    WHILE next_queue IS NOT NULL LOOP
        queues := queues || next_queue;
        next_queue := (SELECT min(j.queue) FROM jobs j WHERE j.state = 'dead' AND j.queue > next_queue);
    END LOOP;
    queues := queues || ARRAY(SELECT DISTINCT j.queue FROM jobs j WHERE j.state = 'running');
    FOR queue IN SELECT DISTINCT q FROM unnest(queues) q ORDER BY q LOOP
        SELECT count(*) FILTER (WHERE c.state = 'queued' AND c.run_after <= now()),
               count(*) FILTER (WHERE c.state = 'queued' AND c.run_after > now()),
               count(*) FILTER (WHERE c.state = 'failed'),
               count(*) > cap
          INTO queued, scheduled, retrying, estimated
          FROM (SELECT j.state, j.run_after FROM jobs j
                 WHERE j.queue BETWEEN queue_depth_rows.queue AND queue_depth_rows.queue  -- (the header)
                   AND j.state IN ('queued', 'failed')
                 ORDER BY j.queue, j.id LIMIT cap + 1) c;
        dead := (SELECT count(*) FROM (SELECT FROM jobs j WHERE j.queue = queue_depth_rows.queue
                                                        AND j.state = 'dead' LIMIT cap + 1) d);
        IF estimated OR dead > cap THEN
            IF sample IS NULL THEN
                percent := backlog_sample_percent('jobs');
                WITH drawn AS (SELECT j.queue, j.state, j.run_after FROM jobs j TABLESAMPLE SYSTEM (percent)),
                     scale AS (SELECT 100.0 / percent AS factor)
                SELECT coalesce(jsonb_object_agg(per_queue.queue, per_queue.counts), '{}') INTO sample
                  FROM (SELECT d.queue, jsonb_build_array(
                                   round(scale.factor * count(*) FILTER (WHERE d.state = 'queued'
                                                                         AND d.run_after <= now())),
                                   round(scale.factor * count(*) FILTER (WHERE d.state = 'queued'
                                                                         AND d.run_after > now())),
                                   round(scale.factor * count(*) FILTER (WHERE d.state = 'failed')),
                                   round(scale.factor * count(*) FILTER (WHERE d.state = 'dead'))) AS counts
                          FROM drawn d, scale GROUP BY d.queue, scale.factor) per_queue;
            END IF;
            counted := coalesce(sample -> queue_depth_rows.queue, '[0, 0, 0, 0]');
            IF estimated THEN
                queued := greatest(queued, (counted ->> 0)::bigint);
                scheduled := greatest(scheduled, (counted ->> 1)::bigint);
                retrying := greatest(retrying, (counted ->> 2)::bigint);
            END IF;
            IF dead > cap THEN
                dead := greatest(dead, (counted ->> 3)::bigint);
                estimated := true;
            END IF;
        END IF;
        oldest_age_s := (SELECT round(extract(epoch FROM now() - j.created_at)::numeric, 1) FROM jobs j
                          WHERE j.queue BETWEEN queue_depth_rows.queue AND queue_depth_rows.queue
                            AND j.state IN ('queued', 'failed') AND j.run_after <= now()
                          ORDER BY j.queue, j.id LIMIT 1);
        SELECT count(*), count(*) FILTER (WHERE j.lease_expires_at < now()) INTO running, expired_leases
          FROM jobs j WHERE j.state = 'running' AND j.queue = queue_depth_rows.queue;
        RETURN NEXT;
    END LOOP;
END $$;

CREATE OR REPLACE VIEW queue_depths AS SELECT * FROM queue_depth_rows();
COMMENT ON VIEW queue_depths IS
    'Per job queue: queued (due now), scheduled (run_after in the future, e.g. the scheduler tick), retrying '
    '(failed, waiting for or past its backoff), running, expired leases, dead, oldest_age_s: how long the oldest '
    'job that could run now has existed; estimated: a count past 1,000 is estimated from a sample (sql/0116).';

-- Per service: submit's ledger entries (RabbitMQ tasks published and not yet answered) and the age of the oldest,
-- counted as above through the ledger's queue-and-age index.
CREATE FUNCTION tasks_in_flight_counts()
RETURNS TABLE (service text, queue text, in_flight bigint, oldest_age_s numeric, estimated boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = windmill, pg_temp SET plan_cache_mode = force_custom_plan
    SET enable_bitmapscan = off SET enable_sort = off SET enable_seqscan = off AS $$
DECLARE
    cap constant integer := backlog_exact_cap();
    sample jsonb;  -- entries per queue in the sample, scaled to the table; drawn once
    percent real;
BEGIN
    queue := (SELECT min(t.queue) FROM service_tasks_in_flight t);
    WHILE queue IS NOT NULL LOOP
        SELECT t.service, round(extract(epoch FROM now() - t.submitted_at)::numeric, 1) INTO service, oldest_age_s
          FROM service_tasks_in_flight t WHERE t.queue = tasks_in_flight_counts.queue
         ORDER BY t.queue, t.submitted_at LIMIT 1;
        in_flight := (SELECT count(*) FROM (SELECT FROM service_tasks_in_flight t
                                             WHERE t.queue = tasks_in_flight_counts.queue LIMIT cap + 1) c);
        estimated := in_flight > cap;
        IF estimated THEN
            IF sample IS NULL THEN
                percent := backlog_sample_percent('service_tasks_in_flight');
                WITH drawn AS (SELECT t.queue FROM service_tasks_in_flight t TABLESAMPLE SYSTEM (percent)),
                     scale AS (SELECT 100.0 / percent AS factor)
                SELECT coalesce(jsonb_object_agg(per_queue.queue, per_queue.entries), '{}') INTO sample
                  FROM (SELECT d.queue, round(scale.factor * count(*)) AS entries
                          FROM drawn d, scale GROUP BY d.queue, scale.factor) per_queue;
            END IF;
            in_flight := greatest(in_flight, coalesce((sample ->> tasks_in_flight_counts.queue)::bigint, 0));
        END IF;
        RETURN NEXT;
        queue := (SELECT min(t.queue) FROM service_tasks_in_flight t WHERE t.queue > tasks_in_flight_counts.queue);
    END LOOP;
END $$;

-- service_progress (sql/0060) takes each service's waiting and running tasks from the same bounded counts.
CREATE OR REPLACE VIEW service_progress AS
SELECT s.name AS service,
       s.category,
       coalesce(depth.queued + depth.scheduled + depth.retrying, 0) AS queued,
       coalesce(depth.running, 0) AS running,
       coalesce(counted.done, 0) AS done,
       coalesce(counted.failed, 0) AS failed,
       last_minute.successes AS rate_1m,
       round(coalesce(last_hour.successes, 0) / 60.0, 2) AS rate_1h,
       newest.last_success_at,
       coalesce(depth.estimated, false) AS estimated
  FROM services s
  LEFT JOIN queue_depth_rows() depth ON depth.queue = 'queue_' || s.name
  LEFT JOIN service_answer_counts counted ON counted.service = s.name
  LEFT JOIN (SELECT service, sum(successes) AS successes FROM service_answer_minutes
              WHERE minute >= now() - interval '1 hour'
              GROUP BY service) last_hour ON last_hour.service = s.name
 CROSS JOIN LATERAL (
        -- The last minute's successes, exactly: an index range as long as the rate.
        SELECT count(*) AS successes FROM results r
         WHERE r.service = s.name AND r.status = 'success'
           AND r.result_created > now() - interval '1 minute') last_minute
 CROSS JOIN LATERAL (
        -- One index entry: the newest of the (service, status, result_created) index.
        SELECT max(r.result_created) AS last_success_at FROM results r
         WHERE r.service = s.name AND r.status = 'success') newest;
