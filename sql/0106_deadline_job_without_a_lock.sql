-- The deadline job is queued without locking it (issue 13 item 6: PostgreSQL's CPU per image).
--
-- Since sql/0105 every voter answer that finds another voter task of its image outstanding makes sure the image's
-- deadline job exists, through enqueue(): a look-up that locks a waiting job FOR SHARE (a tuple lock, written to
-- the WAL, a multixact when answers share it), or an insert. About 70–80 µs of PostgreSQL per such answer in
-- `python -m windmill.bench.answer_cost`, nine answers in ten. That lock is enqueue()'s no-lost-wake-up rule: the
-- waiting job must not be claimed before the transaction that relied on it commits, so that its run reads what
-- that transaction wrote. A deadline job relies on nothing a transaction writes: it is a timer, and whatever it
-- finds when it runs, the last voter's final row queues a vote of its own through the gate (sql/0105), which reads
-- everything. So a plain insert that yields to a waiting one suffices (ON CONFLICT on jobs_dedupe_queued_key: the
-- waiting one keeps its time, so the wait does not slide with later answers, as before).
--
-- The transaction still notes that it made sure of the deadline job (enqueue_covered), so a merge's repeated box-row
-- triggers return at once (sql/0103, 0105); enqueue_covered checks the job is still waiting at each call.
CREATE OR REPLACE FUNCTION enqueue_consensus_deadline(p_image_id bigint) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    deadline job_spec := consensus_deadline_job(p_image_id);
    new_id bigint;
    waiting_id bigint;
BEGIN
    IF enqueue_covered(deadline) THEN
        RETURN NULL;
    END IF;
    INSERT INTO jobs (queue, image_id, payload, dedupe_key, max_attempts, run_after)
    VALUES (deadline.queue, deadline.image_id, deadline.payload, deadline.dedupe_key, deadline.max_attempts,
            deadline.run_after)
    ON CONFLICT (queue, dedupe_key) WHERE state = 'queued' DO NOTHING
    RETURNING id INTO new_id;
    IF new_id IS NULL THEN
        SELECT id INTO waiting_id FROM jobs
         WHERE queue = deadline.queue AND dedupe_key = deadline.dedupe_key AND state = 'queued';
    END IF;
    IF coalesce(new_id, waiting_id) IS NOT NULL THEN
        PERFORM set_config('windmill.enqueue_covered', deadline.queue || ' ' || deadline.dedupe_key, true),
                set_config('windmill.enqueue_covered_id', coalesce(new_id, waiting_id)::text, true);
    END IF;
    RETURN new_id;
END $$;
