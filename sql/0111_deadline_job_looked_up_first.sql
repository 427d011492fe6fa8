-- The deadline job is looked up before it is inserted (issue 13 item 6: PostgreSQL's CPU per answer).
--
-- Since sql/0106 an answer that leaves the vote to another voter's final row makes sure the image's deadline job
-- exists with an INSERT that yields to a waiting one (ON CONFLICT DO NOTHING), then, when it yielded, a look-up of
-- the waiting job's id. The waiting job is the common case: about nine answers in ten of an image find it (only
-- the first one queues it). Each of them paid for an INSERT that stores nothing (its executor, its defaults and
-- checks, the conflict's probe of jobs_dedupe_queued_key) before the look-up it needed anyway. Now the look-up comes
-- first, and only an answer that finds no waiting job inserts one (yielding, as before, to one queued meanwhile).
-- The same outcome: a waiting job keeps its time (the wait does not slide with later answers), nothing is locked
-- (the deadline job is a timer, sql/0106), and the transaction notes the job it made sure of (enqueue_covered).
CREATE OR REPLACE FUNCTION enqueue_consensus_deadline(p_image_id bigint) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    deadline job_spec := consensus_deadline_job(p_image_id);
    new_id bigint;
    waiting_id bigint;
BEGIN
    IF enqueue_covered(deadline) THEN
        RETURN NULL;
    END IF;
    SELECT id INTO waiting_id FROM jobs
     WHERE queue = deadline.queue AND dedupe_key = deadline.dedupe_key AND state = 'queued';
    IF waiting_id IS NULL THEN
        INSERT INTO jobs (queue, image_id, payload, dedupe_key, max_attempts, run_after)
        VALUES (deadline.queue, deadline.image_id, deadline.payload, deadline.dedupe_key, deadline.max_attempts,
                deadline.run_after)
        ON CONFLICT (queue, dedupe_key) WHERE state = 'queued' DO NOTHING
        RETURNING id INTO new_id;
        IF new_id IS NULL THEN  -- queued by another transaction since the look-up
            SELECT id INTO waiting_id FROM jobs
             WHERE queue = deadline.queue AND dedupe_key = deadline.dedupe_key AND state = 'queued';
        END IF;
    END IF;
    IF coalesce(new_id, waiting_id) IS NOT NULL THEN
        PERFORM set_config('windmill.enqueue_covered', deadline.queue || ' ' || deadline.dedupe_key, true),
                set_config('windmill.enqueue_covered_id', coalesce(new_id, waiting_id)::text, true);
    END IF;
    RETURN new_id;
END $$;
