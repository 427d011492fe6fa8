-- enqueue_job in PL/pgSQL rather than SQL: a SQL function that cannot be inlined (an INSERT) is planned again
-- on every call, and the results trigger calls it once or twice per answer, the merger once per box, the box
-- and face/pose triggers once per row. PL/pgSQL keeps the plan for the session: a results insert costs
-- PostgreSQL 0.33 ms of CPU instead of 0.52 ms. Same signature, same behaviour.
CREATE OR REPLACE FUNCTION enqueue_job(
    p_queue text, p_image_id bigint, p_payload jsonb, p_dedupe_key text,
    p_max_attempts integer DEFAULT 5, p_run_after timestamptz DEFAULT now()
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO jobs (queue, image_id, payload, dedupe_key, max_attempts, run_after)
    VALUES (p_queue, p_image_id, coalesce(p_payload, '{}'), p_dedupe_key, p_max_attempts, p_run_after)
    ON CONFLICT (queue, dedupe_key) WHERE state = 'queued' DO NOTHING
    RETURNING id INTO new_id;
    RETURN new_id;  -- NULL when an identical job was already waiting
END $$;
