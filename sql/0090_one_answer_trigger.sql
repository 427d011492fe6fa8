-- One row trigger per answer instead of three (issue 13 item 6: PostgreSQL's CPU per answer). Every results INSERT
-- fired results_enqueue_follow_up (sql/0012: the merge, consensus and caption-score jobs of a success),
-- results_note_change (sql/0060: the counters' delta) and results_release_task_in_flight (sql/0020: the task's
-- ledger entry), each a PL/pgSQL call with its own trigger frame and its own copy of the new row. One function now
-- does the three, in the order they fired (the triggers of a table fire in name order): the same statements, the
-- same locks in the same order, so the no-lost-wake-up argument of sql/0012 and the exactness of sql/0060 are
-- unchanged. `python -m windmill.bench.answer_cost` measures what it saves.
--
-- Deletions keep results_note_change, now on DELETE only: an answer deleted (with its image) frees no task and
-- queues nothing.

CREATE FUNCTION answer_stored() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    svc services%ROWTYPE;
BEGIN
    -- The follow-up jobs (sql/0012's contract): a detector's success re-harmonizes, a voter's recomputes the vote,
    -- a caption source's is scored.
    IF NEW.status = 'success' THEN
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
    END IF;
    -- The counters' delta (sql/0060), committed with the answer.
    INSERT INTO service_answer_count_deltas VALUES
        (NEW.result_id, NEW.image_id, NEW.service, NEW.status, NEW.result_created, 1);
    -- The task's final row frees its pair in the ledger of tasks in flight (sql/0020); only that very task's entry.
    DELETE FROM service_tasks_in_flight
     WHERE image_id = NEW.image_id AND service = NEW.service AND task_id = NEW.task_id;
    RETURN NULL;
END $$;

DROP TRIGGER results_enqueue_follow_up ON results;
DROP TRIGGER results_release_task_in_flight ON results;
DROP FUNCTION enqueue_after_result();
DROP FUNCTION release_task_in_flight();

CREATE TRIGGER results_answer_stored AFTER INSERT ON results
    FOR EACH ROW EXECUTE FUNCTION answer_stored();

CREATE OR REPLACE TRIGGER results_note_change AFTER DELETE ON results
    FOR EACH ROW EXECUTE FUNCTION note_answer_change();
