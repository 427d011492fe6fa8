-- A wake-up channel per queue. With one channel for every queue, each due job woke every worker of the fleet, and
-- each woken worker claimed in every lane it has: an answer's merge job woke the service workers (a claim per
-- service queue), postprocessing, consensus and caption scoring too, and almost all of those claims found
-- nothing. In the whole-pipeline benchmark the consensus worker spent about 60 % of its CPU outside its handler,
-- on such claims; every worker paid the same, and PostgreSQL ran every empty claim.
--
-- Now a job due now notifies its own queue's channel (job_channel()); a worker listens on the channels of the
-- queues it serves and claims in the lane of the queue named. `windmill_jobs` stays the channel that wakes every
-- worker for every queue (`jobs retry`, the explicit notify_jobs). Payloads stay empty (DESIGN rule 3); PostgreSQL
-- still folds a transaction's notifications of one channel into one.

-- A channel name is an identifier: at most 63 bytes, or pg_notify() refuses it. A queue name too long for that
-- (a service named at length) gets the md5 of its name instead; both sides ask this function.
CREATE FUNCTION job_channel(p_queue text) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN octet_length('windmill_jobs.' || p_queue) <= 63 THEN 'windmill_jobs.' || p_queue
                ELSE 'windmill_jobs.' || md5(p_queue) END
$$;

CREATE OR REPLACE FUNCTION notify_job_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(job_channel(NEW.queue), '');
    RETURN NULL;
END $$;

-- A worker's LISTENs: the wake-all channel and one per queue it serves; returns each queue's channel, so that a
-- notification can be told apart by its channel. (LISTEN takes an identifier, not a parameter: hence EXECUTE.)
CREATE FUNCTION listen_job_queues(p_queues text[]) RETURNS TABLE (queue text, channel text)
LANGUAGE plpgsql AS $$
BEGIN
    LISTEN windmill_jobs;
    FOR queue, channel IN SELECT q, job_channel(q) FROM unnest(p_queues) AS q LOOP
        EXECUTE format('LISTEN %I', channel);
        RETURN NEXT;
    END LOOP;
END $$;
