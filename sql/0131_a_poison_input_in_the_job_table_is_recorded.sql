-- A job whose last attempt's lease expired twice (its workers died on it each time: a poison input, such as an image
-- that crashes the decoder or takes more memory than the worker has) went dead with no row (sql/0126): a service
-- task, a box's postprocessing and a caption score were left without the row every failure ends in (DESIGN rule 4),
-- and the backfill leaves a dead job's pairs alone. Now the claim hands such a job to its role in a mode that records
-- the failure only, without reading the image or calling the service (`poison`, claim_round_trip): the role writes
-- its error row of the one shape, `the worker died handling it twice (…)`; a role with no row to write (merge,
-- consensus, the scheduler's tick) ends the job dead with that reason. Only a lease that expires again while the
-- failure is being recorded (the recording itself cannot be the poison: it reads no image) ends the job dead with
-- no row, as before.
--
-- A job's way through its expired leases on the last attempt, by its last_error (the same rule for the claim and for
-- the backfill, which both call these functions):
--   expired once:  'lease of worker W expired on its last attempt; run once more to record its outcome (before: …)'
--   twice:         'lease of worker W expired on its last attempt twice: … its failure is recorded …'  → poison
--   three times:   dead, 'lease of worker W expired while the failure of a poison input was recorded; …'

-- Whether a job whose lease expired is given up (dead): only when the lease of its recording expired.
CREATE OR REPLACE FUNCTION expired_lease_gives_up(p_attempts integer, p_max_attempts integer, p_last_error text)
RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
    SELECT p_attempts >= p_max_attempts
       AND coalesce(p_last_error LIKE 'lease of worker % expired on its last attempt twice: %', false)
$$;

-- Whether a job whose lease expired has its failure recorded as a poison input: its last attempt had expired once.
CREATE FUNCTION expired_lease_poisons(p_attempts integer, p_max_attempts integer, p_last_error text)
RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
    SELECT p_attempts >= p_max_attempts
       AND coalesce(p_last_error LIKE 'lease of worker % expired on its last attempt; run once more%', false)
$$;

-- Whether a claimed job is a poison input, to record without running it (the claim's `poison`).
CREATE FUNCTION job_is_poison(p_attempts integer, p_max_attempts integer, p_last_error text)
RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
    SELECT p_attempts >= p_max_attempts
       AND coalesce(p_last_error LIKE 'lease of worker % expired on its last attempt twice: %', false)
$$;

-- The job's last_error once its lease expired: its reason before is kept.
CREATE OR REPLACE FUNCTION expired_lease_error(p_owner text, p_attempts integer, p_max_attempts integer,
                                               p_last_error text)
RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE
        WHEN p_attempts < p_max_attempts THEN 'lease of worker ' || coalesce(p_owner, '?') || ' expired'
        WHEN expired_lease_gives_up(p_attempts, p_max_attempts, p_last_error)
            THEN 'lease of worker ' || coalesce(p_owner, '?') || ' expired while the failure of a poison input was '
                 || 'recorded: no outcome is recorded (`jobs retry` runs it again)'
                 || coalesce(substring(p_last_error FROM ' \(before: .*\)$'), '')
        WHEN expired_lease_poisons(p_attempts, p_max_attempts, p_last_error)
            THEN 'lease of worker ' || coalesce(p_owner, '?') || ' expired on its last attempt twice: its workers '
                 || 'died handling it each time (a poison input); its failure is recorded without running it'
                 || coalesce(substring(p_last_error FROM ' \(before: .*\)$'), '')
        ELSE 'lease of worker ' || coalesce(p_owner, '?') || ' expired on its last attempt; run once more to record '
             || 'its outcome' || coalesce(' (before: ' || p_last_error || ')', '')
    END
$$;
