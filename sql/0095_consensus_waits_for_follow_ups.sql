-- A consensus job that finds the image's follow-up work still in flight waits for it, within a bound.
--
-- A vote reads the image's answers, its box set and the face/pose rows of its boxes. Right after the answers, a
-- merge of the image is usually still queued or running, and the face and pose analysis of its new person boxes
-- after that: each of them, once stored, queues another vote. A vote taken meanwhile is replaced within about a
-- second; in the whole-pipeline benchmark this made about three votes per image. So the consensus job, when a
-- merge, face or pose job of its image is queued, running or waiting for a retry, queues its successor (the usual
-- consensus_job: the debounce later) instead of voting, and the work in flight wakes the vote again when it
-- stores its rows.
--
-- Freshness is bounded, not traded away: an image waits only while its consensus is younger than
-- consensus_max_lag() (or, before its first vote, while its first answer is), so a stored consensus lags its
-- inputs by at most that bound plus the debounce, even if a follow-up keeps failing. Correctness does not depend on
-- the clock: whatever the decision, a consensus job waits (queued here, or by a trigger) and the vote it runs reads
-- every row committed before it (DESIGN rule 7). Operators tune the bound by replacing the function; '0 seconds'
-- turns waiting off.

CREATE FUNCTION consensus_max_lag() RETURNS interval LANGUAGE sql IMMUTABLE AS $$ SELECT interval '2 seconds' $$;

-- Work in flight whose rows a vote on the image reads: its merge, the face and pose analysis of its boxes.
-- Reads the image's jobs through jobs_image_idx.
CREATE FUNCTION consensus_inputs_in_flight(p_image_id bigint) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM jobs
                    WHERE image_id = p_image_id AND state IN ('queued', 'running', 'failed')
                      AND queue IN ('merge', 'postprocess_face', 'postprocess_pose'))
$$;

-- Queue the image's next consensus job instead of voting now, when its follow-up work is in flight and the wait
-- stays within consensus_max_lag(); true when it did (the caller then does not vote).
CREATE FUNCTION defer_consensus(p_image_id bigint, p_now timestamptz) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    since timestamptz;
BEGIN
    IF NOT consensus_inputs_in_flight(p_image_id) THEN
        RETURN false;
    END IF;
    SELECT consensus_created INTO since FROM consensus WHERE image_id = p_image_id;
    IF since IS NULL THEN
        SELECT min(result_created) INTO since FROM results WHERE image_id = p_image_id AND status = 'success';
    END IF;
    IF since IS NULL OR since <= p_now - consensus_max_lag() THEN
        RETURN false;
    END IF;
    PERFORM enqueue(consensus_job(p_image_id));
    RETURN true;
END $$;
