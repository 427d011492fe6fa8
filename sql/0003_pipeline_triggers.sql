-- The pipeline's wiring: stored answers enqueue the follow-up work, deduplicated per image.

-- A successful detector answer re-harmonizes the image's boxes; a voter's answer recomputes consensus.
CREATE FUNCTION enqueue_after_result() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    svc services%ROWTYPE;
BEGIN
    SELECT * INTO svc FROM services WHERE name = NEW.service;
    IF svc.is_detector THEN
        PERFORM enqueue_job('merge', NEW.image_id, jsonb_build_object('image_id', NEW.image_id),
                            'merge:' || NEW.image_id);
    END IF;
    IF svc.consensus_enabled THEN
        PERFORM enqueue_job('consensus', NEW.image_id, jsonb_build_object('image_id', NEW.image_id),
                            'consensus:' || NEW.image_id);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER results_enqueue_follow_up AFTER INSERT ON results
    FOR EACH ROW WHEN (NEW.status = 'success') EXECUTE FUNCTION enqueue_after_result();

-- Every change of an image's merged boxes, and every face/pose answer on a person box, is evidence
-- for the vote: recompute the consensus.
CREATE FUNCTION enqueue_consensus_for_image() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed_image bigint := CASE WHEN TG_OP = 'DELETE' THEN OLD.image_id ELSE NEW.image_id END;
BEGIN
    -- A cascade from a deleted image has nothing left to vote on.
    IF EXISTS (SELECT 1 FROM images WHERE image_id = changed_image) THEN
        PERFORM enqueue_job('consensus', changed_image, jsonb_build_object('image_id', changed_image),
                            'consensus:' || changed_image);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER merged_boxes_enqueue_consensus AFTER INSERT OR DELETE ON merged_boxes
    FOR EACH ROW EXECUTE FUNCTION enqueue_consensus_for_image();

CREATE TRIGGER postprocessing_enqueue_consensus AFTER INSERT ON postprocessing
    FOR EACH ROW WHEN (NEW.service IN ('face', 'pose')) EXECUTE FUNCTION enqueue_consensus_for_image();
