-- The triggers queue the image's vote only when it can vote (issue 13 item 6: PostgreSQL's CPU per image; issue 19
-- item 5: Windmill's CPU per image).
--
-- Why. Every voter's final row (answer_stored), every box change (merged_boxes, deferred) and every face/pose row
-- (postprocessing, deferred) queued a debounced vote (enqueue_consensus). Since 0104 a vote that finds a voter task of
-- the image outstanding is put off: it stores nothing and makes sure the deadline job exists. Under load (answers of
-- an image minutes apart) that was 3.9-4.6 consensus jobs run per image for 1.0 vote stored, each put-off job a
-- claim, the consensus_inputs read, the deadline enqueue and a completion. Now the three triggers call queue_vote()
-- below, which asks 0104's question before it queues anything: with a voter task outstanding it queues no vote and
-- only makes sure the deadline job exists; otherwise it queues the vote as before. The vote (windmill/roles/consensus.py)
-- keeps its own put-off check as the safety net: a resubmit can add voter tasks after a vote was queued.
--
-- The vote gate. queue_vote() first takes a transaction-scoped advisory lock of the image in a namespace of its own
-- (vote_gate_key; the products' recompute locks are the other namespaces of image_lock_key, windmill/locks.py), and
-- only then, in a separate statement, asks whether a voter task other than the one being finished is outstanding.
-- Under READ COMMITTED that statement's snapshot is taken after the lock was granted, so it sees everything the
-- gate's previous holder committed (a transaction commits, is visible, and only then releases its locks). Without the
-- gate, the final rows of an image's last two voter tasks, committing together, would each see the other's task
-- still outstanding, and neither would queue the vote: the image would wait for its deadline job.
--
-- Why it cannot lose the last vote. Every transaction that finishes a voter task (the final row's ledger delete, or
-- the results row a job-table task is matched against) passes the gate in that transaction, and holds it to commit.
--   - Two final rows committing together serialise on the gate: the second takes it after the first committed and
--     sees the first's task finished, so the last of them to pass sees none outstanding and queues the vote.
--   - A box change or a face/pose row that passes the gate while a voter task is outstanding queues no vote: that
--     task's final row comes later, passes the gate after the change committed (the change held the gate to its
--     commit), and queues a vote that is claimed after it commits: the vote reads the change. Likewise a final row
--     that skips because another voter task is outstanding.
--   - A task whose final row never comes (a lost message, a task forgotten by an operator, a job-table task dead
--     without its error row): whoever skipped made sure the deadline job exists, which votes anyway after
--     consensus_max_wait(). A vote not put off still drops that deadline job (0104): it saw no task outstanding, so
--     every final row that ended one had committed, and each skipper had committed before that final row passed the
--     gate; the vote read every skipped change. (One gap, left to the backfill: an operator's `tasks forget` of the
--     very task a skipper waits for, committed while the skipper is still open.)
--   - The check runs in a READ COMMITTED statement. A writer in REPEATABLE READ would check against its first
--     snapshot; the workers and triggers write in READ COMMITTED, and the put-off vote and the deadline job remain.
--   - The outstanding definition is 0104's (voter_tasks_outstanding below, one home for both): ledger entries of
--     consensus_enabled services, job-table service tasks without a results row. answer_stored deletes the final
--     row's own ledger entry after it queues the vote (0097's lock order), so the ledger check leaves out the task
--     being finished; a job-table task's own results row is already visible to its trigger. Several final rows of
--     one image in one statement (a group, windmill/roles/answers.py): each trigger call sees the rows before it
--     finished (their ledger deletes, their results rows), so the last one queues the vote.
--
-- Lock order (no cycle). The gate is the first lock an answer takes on its image (before the consensus or deadline
-- job, then the merge and caption-score jobs: 0097), and a group's rows are inserted by image, so a group takes its
-- images' gates in ascending order. The deferred triggers (0009) take the gate at commit, after every box row and
-- product lock of their transaction, and wait there holding no job row lock of the image. A gate holder waits only
-- for job row locks: a claim (which waits for nothing) or another transaction's insert of the same job key, which
-- is either a gate holder (not possible: one per image) or ungated work (the vote's deadline enqueue, the backfill)
-- that never waits for a gate. The products' recompute locks (locks.py) are never taken while holding the gate; the
-- merger takes its own then the gate (at commit); the vote takes its own and never the gate. The gate serialises the
-- voter answers of one image until each commits; answers of different images do not meet.
--
-- Once per transaction (0103): a merge's deferred trigger fires for every box row; the first call decides, the
-- others find this transaction's last enqueue covering the vote or the deadline job and return at once.

-- The advisory-lock keys of an image, one rule for all: namespace 0 is the vote gate, 1-3 the products' recomputes
-- (windmill/locks.py Product), four keys per image so that no two (image, namespace) pairs share one.
CREATE FUNCTION image_lock_key(p_image_id bigint, p_namespace integer) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_image_id * 4 + p_namespace
$$;

CREATE FUNCTION vote_gate_key(p_image_id bigint) RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT image_lock_key(p_image_id, 0)
$$;

-- Has the image a voter task without its final row, other than p_except_task (the task a final row is finishing;
-- NULL: none)? 0104's definition; PL/pgSQL for its plan (sql/0099).
CREATE FUNCTION voter_tasks_outstanding(p_image_id bigint, p_except_task uuid) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM service_tasks_in_flight t
                     JOIN services s ON s.name = t.service AND s.consensus_enabled
                    WHERE t.image_id = p_image_id AND t.task_id IS DISTINCT FROM p_except_task)
        OR EXISTS (SELECT 1 FROM jobs j
                     JOIN services s ON s.name = j.payload ->> 'service_name' AND s.consensus_enabled
                    WHERE j.image_id = p_image_id AND j.state IN ('queued', 'running', 'failed')
                      AND j.payload ? 'task_id'
                      AND NOT EXISTS (SELECT 1 FROM results r WHERE r.task_id = (j.payload ->> 'task_id')::uuid));
END $$;

-- 0104's function, its definition now in voter_tasks_outstanding().
CREATE OR REPLACE FUNCTION consensus_waits_for_voters(p_image_id bigint, p_payload jsonb) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF coalesce((p_payload ->> 'deadline')::boolean, false) THEN
        RETURN false;
    END IF;
    RETURN voter_tasks_outstanding(p_image_id, NULL);
END $$;

-- Queue the image's vote if it can vote now, else make sure its deadline job exists (see the header); true when the
-- vote was queued (or a waiting one locked). p_finishing_task: the task whose final row calls (NULL for others).
-- VOLATILE: each statement takes a new snapshot, and the check must see what the gate's previous holder committed.
CREATE FUNCTION queue_vote(p_image_id bigint, p_finishing_task uuid) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(vote_gate_key(p_image_id));
    -- A statement of its own, after the lock was granted (the header).
    IF voter_tasks_outstanding(p_image_id, p_finishing_task) THEN
        PERFORM enqueue_consensus_deadline(p_image_id);
        RETURN false;
    END IF;
    PERFORM enqueue_consensus(p_image_id);
    RETURN true;
END $$;

-- 0104's answer_stored, the vote through the gate; otherwise unchanged (the gate first: the lock order).
CREATE OR REPLACE FUNCTION answer_stored() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    svc services%ROWTYPE;
BEGIN
    SELECT * INTO svc FROM services WHERE name = NEW.service;
    -- The follow-up jobs (sql/0012's contract): a voter's final row (success or not) queues the vote when it can
    -- vote, a detector's success re-harmonizes, a caption source's success is scored.
    IF svc.consensus_enabled THEN
        PERFORM queue_vote(NEW.image_id, NEW.task_id);
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

-- 0103's trigger of box changes and face/pose rows, the vote through the gate.
CREATE OR REPLACE FUNCTION enqueue_consensus_for_image() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed_image bigint := CASE WHEN TG_OP = 'DELETE' THEN OLD.image_id ELSE NEW.image_id END;
BEGIN
    -- Every box row of a merge comes here at commit: the first call of the transaction decided for the rest, and
    -- holds the gate to commit (the header).
    IF enqueue_covered(consensus_job(changed_image)) OR enqueue_covered(consensus_deadline_job(changed_image)) THEN
        RETURN NULL;
    END IF;
    -- A cascade from a deleted image has nothing left to vote on.
    IF EXISTS (SELECT 1 FROM images WHERE image_id = changed_image) THEN
        PERFORM queue_vote(changed_image, NULL);
    END IF;
    RETURN NULL;
END $$;
