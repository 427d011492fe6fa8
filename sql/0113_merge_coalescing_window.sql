-- A merge job falls due merge_delay() after it is queued, so the detector answers of an image that arrive within
-- that window are merged once. Every detector answer still leads to a merge that reads it (the answer's trigger
-- queues the job or finds it waiting, as before: sql/0080); what changes is that the job waits a little for the
-- image's other detectors. The reference re-harmonized after every spatial answer (reference-behaviour.md, race
-- 7: churn); at zero latency the detectors of an image answer within tens of milliseconds of each other and a merge
-- ran for nearly every one of them (3.7 merges per image of five detectors in `bench pipeline --baseline`).
--
-- Waking the merger. A job due later than now sent no notification (sql/0085's WHEN) and was claimed at the poll
-- (about a second). Now a job due within 100 ms notifies when it is queued, and a worker whose role delays its queue
-- claims that long after the notification reached it (windmill/worker/runtime.py): the job, due merge_delay() after
-- its transaction began, is due by then. A consensus job (consensus_delay(), 500 ms) still waits for the poll, which
-- claims a second's votes at once. job_queue_backed_up counts only jobs due when queued, so a merge
-- queue that falls behind still notifies at every commit that queues a merge (one per transaction and queue).
CREATE FUNCTION merge_delay() RETURNS interval LANGUAGE sql IMMUTABLE AS $$ SELECT interval '50 milliseconds' $$;

CREATE OR REPLACE FUNCTION merge_job(p_image_id bigint) RETURNS job_spec LANGUAGE sql STABLE AS $$
    SELECT ROW('merge', p_image_id, jsonb_build_object('image_id', p_image_id), 'merge:' || p_image_id,
               now() + merge_delay(), 5)::job_spec
$$;

CREATE OR REPLACE TRIGGER jobs_notify_queued AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.state = 'queued' AND NEW.run_after <= now() + interval '100 milliseconds')
    EXECUTE FUNCTION notify_job_queued();
