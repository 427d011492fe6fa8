-- A merge's repeated consensus trigger returns at once (issue 13 item 6: PostgreSQL's CPU per image). The deferred
-- trigger on merged_boxes (0009) runs at commit once per box row a merge inserted, updated or deleted (about eleven
-- per image), and every call after the first still read images, built the job through enqueue_consensus() and
-- consensus_job(), and went into enqueue() only to find the job covered (0080).
--
-- 0080's check moves into a function of its own, enqueue_covered(job), which enqueue() and the trigger both call:
-- this transaction's last deduplicated enqueue covered this very job (queue and key, in the transaction-local
-- settings), and the job still waits (one read by primary key). The trigger asks it first, before it reads images
-- and builds the job, so a merge of eleven boxes runs the full path once and ten reads by primary key.
--
-- Why it is safe. A covered job is one this transaction inserted (invisible to others) or holds FOR SHARE (no
-- other transaction can claim, update or delete it meanwhile); the read by primary key still catches this
-- transaction moving it itself, as enqueue()'s covered path did. The trigger stays deferred (0009: the consensus
-- key is taken after every box row lock), and the short path takes no lock at all, so no lock is taken that was not
-- taken before, nor in another order (0097). When the image was deleted since (a cascade), the short path returns
-- as the old one did: enqueue()'s covered path queued nothing either.

-- Whether this transaction already covers the job: its last deduplicated enqueue was of the same queue and key, and
-- that job still waits (then this transaction inserted it or holds its lock, 0080). A read that writes nothing.
CREATE FUNCTION enqueue_covered(p_job job_spec) RETURNS boolean LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF current_setting('windmill.enqueue_covered', true) IS DISTINCT FROM p_job.queue || ' ' || p_job.dedupe_key THEN
        RETURN false;
    END IF;
    RETURN EXISTS (SELECT FROM jobs
                    WHERE id = current_setting('windmill.enqueue_covered_id')::bigint AND state = 'queued');
END $$;

-- 0080's enqueue(), its covered check moved to enqueue_covered(); otherwise unchanged.
CREATE OR REPLACE FUNCTION enqueue(p_job job_spec) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    new_id bigint;
    found_id bigint;
    covered text;
BEGIN
    IF p_job.dedupe_key IS NOT NULL THEN
        IF enqueue_covered(p_job) THEN
            RETURN NULL;  -- this transaction holds that waiting job's lock, or inserted it
        END IF;
        covered := p_job.queue || ' ' || p_job.dedupe_key;
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

CREATE OR REPLACE FUNCTION enqueue_consensus_for_image() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed_image bigint := CASE WHEN TG_OP = 'DELETE' THEN OLD.image_id ELSE NEW.image_id END;
BEGIN
    -- Every box row of a merge comes here at commit: the first call of the transaction covers the rest (above).
    IF enqueue_covered(consensus_job(changed_image)) THEN
        RETURN NULL;
    END IF;
    -- A cascade from a deleted image has nothing left to vote on.
    IF EXISTS (SELECT 1 FROM images WHERE image_id = changed_image) THEN
        PERFORM enqueue_consensus(changed_image);
    END IF;
    RETURN NULL;
END $$;
