-- A consensus job does not vote while the image still has voter tasks outstanding, within a bound.
--
-- Why. Every voter answer, box change and face/pose row queues a vote consensus_delay() later (0010). In a bulk run
-- each service queue drains at its own rate, so an image's answers arrive minutes apart and nearly each one caused
-- its own vote: votes per image came to about answers + box changes, and only the vote after the last voter answer
-- is the final product. Now a consensus job that finds the consensus not current while a voter task of the image is
-- still outstanding (consensus_waits_for_voters below) stores nothing and makes sure a deadline job exists for the
-- image instead (consensus_deadline_job: the same queue, its own dedupe key, run_after = now() +
-- consensus_max_wait()). A deadline job votes whatever is outstanding: a dead or slow service delays the consensus
-- of the living ones by at most consensus_max_wait() after the first vote put off (an existing deadline job keeps
-- its time: the wait does not slide with later answers). The first vote that is not put off drops the queued
-- deadline job (drop_consensus_deadline below).
--
-- Outstanding voter task: a task of a consensus_enabled service that has no final row yet. RabbitMQ: its ledger entry
-- (sql/0020), deleted by the final row's trigger in the row's own transaction. Job table: a service-task job (payload
-- with task_id) queued, running or waiting for a retry, whose task_id has no results row: the job stays 'running'
-- after its answer commits, until its worker completes it, and must not hold the vote back meanwhile.
--
-- Every final row of a voter, success OR error/timeout, now queues the debounced vote (before, only a success did).
-- An error changes nothing the vote reads, but it ends an outstanding task: without it a vote put off for that task
-- would wait for the deadline. (Every results row is a task's final row: a retryable failure is retried, not
-- stored.) A vote that finds nothing changed stores nothing, so the extra job costs one read.
--
-- Why the final consensus still sees every answer. A vote put off always has a successor that runs after the
-- outstanding task's final row commits:
--   - the task's final row queues the normal vote in the transaction that removes the task from "outstanding" (the
--     ledger delete, or the results row a job-table task is matched against). If that transaction's enqueue found
--     the vote's job queued, it holds it FOR SHARE until it commits (sql/0012), so the job is claimed, and the
--     snapshot taken, after the row is visible: the vote sees the task answered. If it found the job running (the
--     vote put off, or about to be), it queued a new job, which runs after the row commits.
--   - the vote reads "outstanding" in the same statement (one snapshot) as the inputs it compares, after the
--     image's consensus lock; so a task it counts as outstanding has not committed its final row in that snapshot,
--     and the row's enqueue comes later than the claim (the case above).
--   - a task whose final row never comes (a lost message, a killed worker on its last attempt leaves no
--     running job; a lost RabbitMQ message leaves its ledger entry): the deadline job votes anyway.
--   - a vote that finds the stored consensus recording the very rows it would read stores nothing (the Python side
--     compares ConsensusInputs.recorded() with the stored record), so successors cost a read, not a vote. That
--     comparison and the backfill's staleness (stale_products, sql/0014) are one rule read twice;
--     tests/test_consensus_waits.py test_the_vote_and_the_backfill_agree_on_what_is_current pins them together.
--
-- The backfill still converges and cannot loop. It queues consensus_job() for an image whose consensus is stale;
-- with voter tasks outstanding that job puts itself off onto the deadline job (queued at most once: its dedupe key),
-- and the deadline job's vote makes the consensus current unless a newer answer came meanwhile, which queued its own
-- vote. A stale image is queued again only when the walk comes back to its page (a lap later), so a put-off image
-- costs the backfill at most one extra read per lap; nothing re-queues itself. pg_cron and the scheduler call the
-- same backfill(). Operators tune the bound by replacing consensus_max_wait(), like consensus_delay().

CREATE FUNCTION consensus_max_wait() RETURNS interval LANGUAGE sql IMMUTABLE AS $$ SELECT interval '30 seconds' $$;

-- The deadline job: a vote that is not put off for outstanding voter tasks (payload "deadline").
CREATE FUNCTION consensus_deadline_job(p_image_id bigint) RETURNS job_spec LANGUAGE sql STABLE AS $$
    SELECT ROW('consensus', p_image_id, jsonb_build_object('image_id', p_image_id, 'deadline', true),
               'consensus-deadline:' || p_image_id, now() + consensus_max_wait(), 5)::job_spec
$$;

CREATE FUNCTION enqueue_consensus_deadline(p_image_id bigint) RETURNS bigint LANGUAGE sql AS $$
    SELECT enqueue(consensus_deadline_job(p_image_id))
$$;

-- The image's deadline job is no longer needed once a vote of the image is not put off (it votes, or finds the
-- consensus current): under the image's lock, after the votes that were put off, it read everything they waited
-- for, and every later change queues a vote of its own (which waits, and queues a new deadline job, if voter tasks
-- are still outstanding). Left queued, the deadline job would only find nothing changed, and keep the image
-- "pending" (image_completeness, a benchmark's or a test's wait for idle) up to consensus_max_wait(). The worker may
-- not delete jobs: the job ends 'done' with the reason. One a claim holds is waited for and then left alone (it
-- runs after this transaction releases the image's lock, and finds nothing changed). True if one was dropped.
CREATE FUNCTION drop_consensus_deadline(p_image_id bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    UPDATE jobs SET state = 'done', updated_at = now(),
                    last_error = 'not needed: a later vote of the image was not put off'
     WHERE queue = (consensus_deadline_job(p_image_id)).queue
       AND dedupe_key = (consensus_deadline_job(p_image_id)).dedupe_key AND state = 'queued';
    RETURN FOUND;
END $$;

-- Is the image's deadline job waiting? (The vote reads it with its inputs, to drop it when it is not needed.)
CREATE FUNCTION consensus_deadline_queued(p_image_id bigint) RETURNS boolean LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM jobs
                    WHERE queue = (consensus_deadline_job(p_image_id)).queue
                      AND dedupe_key = (consensus_deadline_job(p_image_id)).dedupe_key AND state = 'queued');
END $$;

-- Does a vote of this job for this image wait for the image's voter tasks? Not a deadline job's; any other's while a
-- task of a consensus_enabled service has no final row (see the header). PL/pgSQL: it reads tables at every vote, and
-- PostgreSQL before 18 would plan an SQL function's body at every call (sql/0099).
CREATE FUNCTION consensus_waits_for_voters(p_image_id bigint, p_payload jsonb) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF coalesce((p_payload ->> 'deadline')::boolean, false) THEN
        RETURN false;
    END IF;
    RETURN EXISTS (SELECT 1 FROM service_tasks_in_flight t
                     JOIN services s ON s.name = t.service AND s.consensus_enabled
                    WHERE t.image_id = p_image_id)
        OR EXISTS (SELECT 1 FROM jobs j
                     JOIN services s ON s.name = j.payload ->> 'service_name' AND s.consensus_enabled
                    WHERE j.image_id = p_image_id AND j.state IN ('queued', 'running', 'failed')
                      AND j.payload ? 'task_id'
                      AND NOT EXISTS (SELECT 1 FROM results r WHERE r.task_id = (j.payload ->> 'task_id')::uuid));
END $$;

-- A voter's final row queues the vote whatever its status; the rest as in 0097 (consensus job first: the lock order).
CREATE OR REPLACE FUNCTION answer_stored() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    svc services%ROWTYPE;
BEGIN
    SELECT * INTO svc FROM services WHERE name = NEW.service;
    -- The follow-up jobs (sql/0012's contract): a voter's final row (success or not) recomputes the vote, a
    -- detector's success re-harmonizes, a caption source's success is scored.
    IF svc.consensus_enabled THEN
        PERFORM enqueue_consensus(NEW.image_id);
    END IF;
    IF NEW.status = 'success' THEN
        IF svc.is_detector THEN
            PERFORM enqueue_merge(NEW.image_id);
        END IF;
        IF svc.caption_scoring THEN
            PERFORM enqueue_caption_score(NEW.image_id, NEW.service);
        END IF;
    END IF;
    -- The counters' delta (sql/0060), committed with the answer.
    INSERT INTO service_answer_count_deltas VALUES
        (NEW.result_id, NEW.image_id, NEW.service, NEW.status, NEW.result_created, 1);
    -- The task's final row frees its pair in the ledger of tasks in flight (sql/0020); only that very task's entry.
    DELETE FROM service_tasks_in_flight
     WHERE image_id = NEW.image_id AND service = NEW.service AND task_id = NEW.task_id;
    RETURN NULL;
END $$;
