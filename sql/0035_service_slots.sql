-- Fleet-wide places for calls to a service (catalog fleet_max_concurrency): slot k of service s is the session
-- advisory lock (hashtext('windmill.service_slot:' || s), k). A session lock outlives transactions and is freed
-- by PostgreSQL when its connection ends, so a worker that dies gives its places back without any lease.
-- (The two-int4 key space does not overlap the single-bigint keys of the per-image locks.)
-- A session may take one lock twice (they stack), so the caller names the slots its session already holds,
-- and this function skips them. In PL/pgSQL the locks are tried one at a time and the first success returns:
-- `SELECT ... WHERE pg_try_advisory_lock(...) LIMIT 1` may take locks it never returns.
CREATE OR REPLACE FUNCTION take_service_slot(p_service text, p_slots integer, p_held integer[])
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    slot integer;
BEGIN
    FOR slot IN 0 .. p_slots - 1 LOOP
        IF NOT slot = ANY(p_held)
           AND pg_try_advisory_lock(hashtext('windmill.service_slot:' || p_service), slot) THEN
            RETURN slot;
        END IF;
    END LOOP;
    RETURN NULL;  -- every place is taken
END $$;

CREATE OR REPLACE FUNCTION give_back_service_slot(p_service text, p_slot integer)
RETURNS boolean LANGUAGE sql AS $$
    SELECT pg_advisory_unlock(hashtext('windmill.service_slot:' || p_service), p_slot)
$$;
