-- An answer queues its image's consensus job before its merge job (sql/0090 queued the merge first). Queueing takes
-- a lock: the waiting job FOR SHARE, or the insert of a new one, which a second inserter of the same job waits on.
-- A statement that stores several answers of one image (a batch: a voter's answer, then a detector's) took the
-- consensus job, then the merge job; a detector's answer alone took the merge job, then the consensus job: two
-- such transactions could each wait for the other (a deadlock, seen under a concurrent mixed workload). Every
-- voting answer now takes the image's consensus job first, so the first lock any answer statement takes on an
-- image is the same one, and whoever waits there holds nothing else of that image.
CREATE OR REPLACE FUNCTION answer_stored() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    svc services%ROWTYPE;
BEGIN
    -- The follow-up jobs (sql/0012's contract): a voter's success recomputes the vote, a detector's
    -- re-harmonizes, a caption source's is scored.
    IF NEW.status = 'success' THEN
        SELECT * INTO svc FROM services WHERE name = NEW.service;
        IF svc.consensus_enabled THEN
            PERFORM enqueue_consensus(NEW.image_id);
        END IF;
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
