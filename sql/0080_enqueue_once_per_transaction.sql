-- One enqueue per job and transaction. The consensus trigger on merged_boxes fires for every box a merge
-- inserts, updates or deletes, all at commit (0009), and each call locked the image's waiting consensus job
-- FOR SHARE again (a row lock is a tuple write, and several lockers make a MultiXact). The first call of a
-- transaction already covers the rest: the job it found stays locked, so unclaimable, until this transaction
-- commits, and the job it inserted is not visible before then; either way the vote runs after every row of this
-- transaction. So enqueue() remembers the last deduplicated job it covered (key and id) in transaction-local
-- settings, and when asked for the same key again only checks by primary key that this very job still waits: a
-- read that writes nothing. Anything else (the job claimed or deleted meanwhile, another key) takes the full
-- path. The settings are undone with the transaction or the savepoint that set them, like the lock and the insert
-- they stand for.
CREATE OR REPLACE FUNCTION enqueue(p_job job_spec) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    new_id bigint;
    found_id bigint;
    covered text;
BEGIN
    IF p_job.dedupe_key IS NOT NULL THEN
        covered := p_job.queue || ' ' || p_job.dedupe_key;
        IF current_setting('windmill.enqueue_covered', true) = covered THEN
            PERFORM FROM jobs WHERE id = current_setting('windmill.enqueue_covered_id')::bigint AND state = 'queued';
            IF FOUND THEN
                RETURN NULL;  -- this transaction holds that waiting job's lock, or inserted it
            END IF;
        END IF;
        FOR attempt IN 1..100 LOOP
            SELECT id INTO found_id FROM jobs
              WHERE queue = p_job.queue AND dedupe_key = p_job.dedupe_key AND state = 'queued'
                FOR SHARE;
            IF found_id IS NOT NULL THEN
                PERFORM set_config('windmill.enqueue_covered', covered, true),
                        set_config('windmill.enqueue_covered_id', found_id::text, true);
                RETURN NULL;  -- the waiting job covers this work, and cannot be claimed before we commit
            END IF;
            INSERT INTO jobs (queue, image_id, payload, dedupe_key, max_attempts, run_after)
            VALUES (p_job.queue, p_job.image_id, coalesce(p_job.payload, '{}'), p_job.dedupe_key,
                    coalesce(p_job.max_attempts, 5), coalesce(p_job.run_after, now()))
            ON CONFLICT (queue, dedupe_key) WHERE state = 'queued' DO NOTHING
            RETURNING id INTO new_id;
            IF new_id IS NOT NULL THEN
                PERFORM set_config('windmill.enqueue_covered', covered, true),
                        set_config('windmill.enqueue_covered_id', new_id::text, true);
                RETURN new_id;
            END IF;
        END LOOP;
        RAISE EXCEPTION 'enqueue: the % job % kept changing under 100 attempts', p_job.queue, p_job.dedupe_key
            USING ERRCODE = 'serialization_failure';
    END IF;
    INSERT INTO jobs (queue, image_id, payload, dedupe_key, max_attempts, run_after)
    VALUES (p_job.queue, p_job.image_id, coalesce(p_job.payload, '{}'), NULL, coalesce(p_job.max_attempts, 5),
            coalesce(p_job.run_after, now()))
    RETURNING id INTO new_id;
    RETURN new_id;
END $$;
