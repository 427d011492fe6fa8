-- One home for the job contract, and no lost wake-up.
--
-- 1. The contract. Each kind of follow-up job is described once, by a function returning a `job_spec`: its
--    queue, image, payload, dedupe key, when it may run and how often it is tried. `enqueue(spec)` queues one,
--    `job_pending(spec)` tells whether one already covers the work (the backfill asks). The triggers, the
--    backfill, the merger (postprocessing of new boxes) and the scheduler (its tick) all go through these; no
--    queue name, payload or key is written anywhere else. `box_postprocessing(merged_data, crop_key)` is the
--    person rule: colors for every box, face and pose for person boxes (is_person_box).
--
-- 2. No lost wake-up. Before this migration an enqueue that found an identical job `queued` did nothing. An
--    answer whose transaction found the image's merge job queued then relied on that job to read it, but a merger
--    could claim the job and read the answers before the answer committed: the answer was never merged (and the
--    same for consensus and caption scores). Now the enqueue takes a row lock on the job it found, FOR SHARE,
--    held until the enqueuing transaction ends:
--
--    - The claim locks what it takes with FOR UPDATE SKIP LOCKED (ready CTE of claim_jobs), which conflicts with
--      FOR SHARE: no worker can claim the job while an answer relying on it is uncommitted. Once the answer
--      commits, the job is claimable, and the handler (a later transaction, a later snapshot) reads the answer.
--      (SKIP LOCKED looks at whether the locker is still in progress, and a transaction is visible as committed
--      before its locks are released, so there is no moment where the job is claimable but the answer unseen.)
--    - Concurrent answers for one image do not block one another: FOR SHARE locks are compatible.
--    - FOR SHARE rather than FOR KEY SHARE: both conflict with the claim's FOR UPDATE, but FOR KEY SHARE lets a
--      plain UPDATE of non-key columns through. FOR SHARE holds every change of the job (state, run_after) until
--      the answer commits, so no future statement that moves a queued job without FOR UPDATE can slip past.
--    - The expired CTE of the claim only takes `running` jobs, which the enqueue never locks. A job found
--      `running` (or `failed`, waiting for a retry) is not touched: a new queued job is inserted, as before; the
--      unique index covers queued jobs only.
--    - If a claimer holds the job FOR UPDATE at that moment, the lock waits for the claim to commit (a single
--      statement that itself never waits: SKIP LOCKED), then finds the job `running` and inserts a new one.
--    - If no job is queued, INSERT. If the INSERT meets a conflicting row (another transaction queued one
--      meanwhile; ON CONFLICT waits for it to commit), loop and lock that one. In REPEATABLE READ the INSERT
--      raises a serialization failure instead of looping (the row is invisible to the snapshot); the loop is
--      bounded all the same.
--    - Consensus debounce: the job waits with run_after in the future; answers arriving meanwhile lock it, so the
--      vote cannot start before the last of them commits, however late its run_after comes.
--    - The deferred constraint triggers of 0009 stay deferred: the consensus key is still taken at commit, after
--      every box row lock, so the merger / postprocessing deadlock cannot come back. A SHARE lock never waits for
--      another SHARE lock, and only for a claim (which waits for nothing) or for an insert of the same key; every
--      transaction takes the keys of one image in the same order (merge, consensus, caption score; consensus
--      last for boxes and face/pose rows), so no cycle forms.
--    - Bulk enqueue (sql/queries/jobs.sql enqueue_jobs: the job-table per-service tasks) keeps ON CONFLICT DO
--      NOTHING: a service task carries its whole input (the image) in its payload, nothing it reads is written by
--      the transaction that queues it, so a waiting task covers a duplicate without a lock.
--    - Wake-up: NOTIFY still fires only for a newly queued job (DESIGN rule 3). A claim that skipped a job while
--      an answer held it finds it at the worker's next claim: right after its current jobs finish when it is busy,
--      at its next poll (about a second) when it is idle. The window is one answer's insert and commit (an
--      autocommit statement of a service worker), so it is rarely hit; notifying on every lock would add a
--      NOTIFY to most answers exactly when the queues are backed up and the workers need no waking.

-- A job to queue, as one value, so that each kind of job is described by one function.
CREATE TYPE job_spec AS (
    queue text,
    image_id bigint,
    payload jsonb,
    dedupe_key text,
    run_after timestamptz,
    max_attempts integer
);

-- Queue a job; returns its id, or NULL when an identical one is waiting (then locked until this transaction ends).
-- PL/pgSQL keeps its plans for the session (0011).
CREATE FUNCTION enqueue(p_job job_spec) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    new_id bigint;
BEGIN
    IF p_job.dedupe_key IS NOT NULL THEN
        FOR attempt IN 1..100 LOOP
            PERFORM FROM jobs
              WHERE queue = p_job.queue AND dedupe_key = p_job.dedupe_key AND state = 'queued'
                FOR SHARE;
            IF FOUND THEN
                RETURN NULL;  -- the waiting job covers this work, and cannot be claimed before we commit
            END IF;
            INSERT INTO jobs (queue, image_id, payload, dedupe_key, max_attempts, run_after)
            VALUES (p_job.queue, p_job.image_id, coalesce(p_job.payload, '{}'), p_job.dedupe_key,
                    coalesce(p_job.max_attempts, 5), coalesce(p_job.run_after, now()))
            ON CONFLICT (queue, dedupe_key) WHERE state = 'queued' DO NOTHING
            RETURNING id INTO new_id;
            IF new_id IS NOT NULL THEN
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

-- The same, field by field (windmill.jobs.enqueue_on, tests). A plain SELECT of enqueue(): the planner inlines it.
CREATE OR REPLACE FUNCTION enqueue_job(
    p_queue text, p_image_id bigint, p_payload jsonb, p_dedupe_key text,
    p_max_attempts integer DEFAULT 5, p_run_after timestamptz DEFAULT now()
) RETURNS bigint LANGUAGE sql AS $$
    SELECT enqueue(ROW(p_queue, p_image_id, p_payload, p_dedupe_key, p_run_after, p_max_attempts)::job_spec)
$$;

-- Is this work already taken care of? A job of the same queue and key waiting, running or waiting for a retry
-- covers it. So does a dead one when it is the newest job of that key: it gave up on this work after its
-- attempts, and `windmill-cli jobs retry` is the operator's call (a backfill must not requeue a poison image
-- forever). Clock-free: "newest" is the highest id. Reads the image's jobs through jobs_image_idx.
CREATE FUNCTION job_pending(p_job job_spec) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT coalesce(bool_or(j.state IN ('queued', 'running', 'failed'))
                    OR (array_agg(j.state ORDER BY j.id DESC))[1] = 'dead', false)
      FROM jobs j
     WHERE j.image_id = p_job.image_id AND j.queue = p_job.queue AND j.dedupe_key = p_job.dedupe_key
$$;

-- The kinds of jobs. Queue names here must match the constants of windmill/jobs/queues.py (a test compares).
CREATE FUNCTION merge_job(p_image_id bigint) RETURNS job_spec LANGUAGE sql STABLE AS $$
    SELECT ROW('merge', p_image_id, jsonb_build_object('image_id', p_image_id), 'merge:' || p_image_id,
               now(), 5)::job_spec
$$;

-- The vote waits consensus_delay() (0010) so that a burst of answers for one image is voted on once.
CREATE FUNCTION consensus_job(p_image_id bigint) RETURNS job_spec LANGUAGE sql STABLE AS $$
    SELECT ROW('consensus', p_image_id, jsonb_build_object('image_id', p_image_id), 'consensus:' || p_image_id,
               now() + consensus_delay(), 5)::job_spec
$$;

CREATE FUNCTION caption_score_job(p_image_id bigint, p_source text) RETURNS job_spec LANGUAGE sql STABLE AS $$
    SELECT ROW('caption_score', p_image_id, jsonb_build_object('image_id', p_image_id, 'service', p_source),
               'caption_score:' || p_source || ':' || p_image_id, now(), 5)::job_spec
$$;

CREATE FUNCTION postprocess_job(p_merged_id bigint, p_image_id bigint, p_service text) RETURNS job_spec
LANGUAGE sql STABLE AS $$
    SELECT ROW('postprocess_' || p_service, p_image_id,
               jsonb_build_object('merged_box_id', p_merged_id, 'image_id', p_image_id),
               p_service || ':' || p_merged_id, now(), 5)::job_spec
$$;

-- The scheduler's tick (windmill/roles/scheduler.py): one waiting at a time, never retried (its successor is
-- queued before the backfill runs).
CREATE FUNCTION scheduler_tick_job(p_delay interval) RETURNS job_spec LANGUAGE sql STABLE AS $$
    SELECT ROW('scheduler', NULL::bigint, '{}'::jsonb, 'scheduler:tick', now() + p_delay, 1)::job_spec
$$;

-- Which postprocessing services a merged box gets: colors for every box, face and pose for people.
CREATE FUNCTION box_postprocessing(p_merged_data jsonb, p_crop_key text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN is_person_box(p_merged_data, p_crop_key) THEN ARRAY['colors', 'face', 'pose']
                ELSE ARRAY['colors'] END
$$;

CREATE FUNCTION enqueue_merge(p_image_id bigint) RETURNS bigint LANGUAGE sql AS $$
    SELECT enqueue(merge_job(p_image_id))
$$;

CREATE FUNCTION enqueue_consensus(p_image_id bigint) RETURNS bigint LANGUAGE sql AS $$
    SELECT enqueue(consensus_job(p_image_id))
$$;

CREATE FUNCTION enqueue_caption_score(p_image_id bigint, p_source text) RETURNS bigint LANGUAGE sql AS $$
    SELECT enqueue(caption_score_job(p_image_id, p_source))
$$;

-- Queue the postprocessing a box needs; returns how many jobs were newly queued (0 when the box is gone).
CREATE FUNCTION enqueue_postprocessing(p_merged_id bigint) RETURNS integer LANGUAGE sql AS $$
    SELECT count(enqueue(postprocess_job(mb.merged_id, mb.image_id, service)))::integer
      FROM merged_boxes mb
     CROSS JOIN LATERAL unnest(box_postprocessing(mb.merged_data, mb.crop_key)) AS service
     WHERE mb.merged_id = p_merged_id
$$;

-- The triggers, through the contract.
CREATE OR REPLACE FUNCTION enqueue_after_result() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    svc services%ROWTYPE;
BEGIN
    SELECT * INTO svc FROM services WHERE name = NEW.service;
    IF svc.is_detector THEN
        PERFORM enqueue_merge(NEW.image_id);
    END IF;
    IF svc.consensus_enabled THEN
        PERFORM enqueue_consensus(NEW.image_id);
    END IF;
    IF svc.caption_scoring THEN
        PERFORM enqueue_caption_score(NEW.image_id, NEW.service);
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION enqueue_consensus_for_image() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed_image bigint := CASE WHEN TG_OP = 'DELETE' THEN OLD.image_id ELSE NEW.image_id END;
BEGIN
    -- A cascade from a deleted image has nothing left to vote on.
    IF EXISTS (SELECT 1 FROM images WHERE image_id = changed_image) THEN
        PERFORM enqueue_consensus(changed_image);
    END IF;
    RETURN NULL;
END $$;
