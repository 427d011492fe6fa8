-- Every capped look-up of the backlog counts (sql/0116) reads its own index, whatever the statistics say (issue 13
-- item 4: status in constant time).
--
-- Why. sql/0116 counted a queue's dead jobs and found the queues with dead jobs as `queue = ...` and `min(queue)`
-- over state = 'dead'. Two partial indexes hold exactly the dead jobs: jobs_dead_idx (queue, updated_at) and, since
-- 0116, jobs_dead_by_time_idx (updated_at), for recent_failures. On statistics that describe the table as it was
-- (analyzed before a load, or before the rows died; autovacuum catches up later) the planner costed both the same
-- and took the smaller one, the one without the queue: every probe of the loose scan and every queue's dead count
-- read every dead job. With 100,000 dead jobs in one queue, one `queue_depths` read 1.2M index entries; dead jobs
-- stay until retried or pruned, so at ten million images that is seconds per status and a metrics scrape lost.
--
-- Now each look-up asks for the order of the one index meant to serve it: the loose scans `ORDER BY queue LIMIT 1`
-- over a state's partial index, the counts a queue's range (BETWEEN, so that the queue is not a known constant the
-- order could drop) `ORDER BY queue, <the index's second column>`, the ledger's likewise through its queue-and-age
-- index. Only an index that leads with the queue gives that order, and the functions keep sorts, sequential scans
-- and bitmap scans off (0116), so any other path carries the planner's disable cost: the plan no longer depends on
-- the statistics, and each look-up stops at the cap. The same counts, the same rows.

CREATE OR REPLACE FUNCTION queue_depth_rows()
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
    -- Every queue with a claimable or dead job (a probe of each partial index per queue, in its order), or a running one.
    next_queue := (SELECT j.queue FROM jobs j WHERE j.state IN ('queued', 'failed') ORDER BY j.queue LIMIT 1);
    WHILE next_queue IS NOT NULL LOOP
        queues := queues || next_queue;
        next_queue := (SELECT j.queue FROM jobs j WHERE j.state IN ('queued', 'failed') AND j.queue > next_queue
                        ORDER BY j.queue LIMIT 1);
    END LOOP;
    next_queue := (SELECT j.queue FROM jobs j WHERE j.state = 'dead' ORDER BY j.queue LIMIT 1);
    WHILE next_queue IS NOT NULL LOOP
        queues := queues || next_queue;
        next_queue := (SELECT j.queue FROM jobs j WHERE j.state = 'dead' AND j.queue > next_queue
                        ORDER BY j.queue LIMIT 1);
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
        dead := (SELECT count(*) FROM (SELECT FROM jobs j
                                        WHERE j.queue BETWEEN queue_depth_rows.queue AND queue_depth_rows.queue
                                          AND j.state = 'dead'
                                        ORDER BY j.queue, j.updated_at LIMIT cap + 1) d);
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

CREATE OR REPLACE FUNCTION tasks_in_flight_counts()
RETURNS TABLE (service text, queue text, in_flight bigint, oldest_age_s numeric, estimated boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = windmill, pg_temp SET plan_cache_mode = force_custom_plan
    SET enable_bitmapscan = off SET enable_sort = off SET enable_seqscan = off AS $$
DECLARE
    cap constant integer := backlog_exact_cap();
    sample jsonb;  -- entries per queue in the sample, scaled to the table; drawn once
    percent real;
BEGIN
    queue := (SELECT t.queue FROM service_tasks_in_flight t ORDER BY t.queue LIMIT 1);
    WHILE queue IS NOT NULL LOOP
        SELECT t.service, round(extract(epoch FROM now() - t.submitted_at)::numeric, 1) INTO service, oldest_age_s
          FROM service_tasks_in_flight t
         WHERE t.queue BETWEEN tasks_in_flight_counts.queue AND tasks_in_flight_counts.queue
         ORDER BY t.queue, t.submitted_at LIMIT 1;
        in_flight := (SELECT count(*) FROM (SELECT FROM service_tasks_in_flight t
                                             WHERE t.queue BETWEEN tasks_in_flight_counts.queue
                                                               AND tasks_in_flight_counts.queue
                                             ORDER BY t.queue, t.submitted_at LIMIT cap + 1) c);
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
        queue := (SELECT t.queue FROM service_tasks_in_flight t WHERE t.queue > tasks_in_flight_counts.queue
                   ORDER BY t.queue LIMIT 1);
    END LOOP;
END $$;
