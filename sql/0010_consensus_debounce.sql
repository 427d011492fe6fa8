-- A consensus job waits a moment before it can run, so that the burst of answers, box changes and face/pose
-- rows of one image is voted on once, not once per row: while the job waits, further triggers for the image
-- find it queued and add nothing. The vote still sees every answer, since it runs after the last one that
-- found the job queued. Operators tune the delay by replacing this function.
CREATE FUNCTION consensus_delay() RETURNS interval LANGUAGE sql IMMUTABLE AS $$ SELECT interval '500 milliseconds' $$;

CREATE OR REPLACE FUNCTION enqueue_after_result() RETURNS trigger LANGUAGE plpgsql AS $$
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
                            'consensus:' || NEW.image_id, 5, now() + consensus_delay());
    END IF;
    IF svc.caption_scoring THEN
        PERFORM enqueue_job('caption_score', NEW.image_id,
                            jsonb_build_object('image_id', NEW.image_id, 'service', NEW.service),
                            'caption_score:' || NEW.service || ':' || NEW.image_id);
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION enqueue_consensus_for_image() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed_image bigint := CASE WHEN TG_OP = 'DELETE' THEN OLD.image_id ELSE NEW.image_id END;
BEGIN
    -- A cascade from a deleted image has nothing left to vote on.
    IF EXISTS (SELECT 1 FROM images WHERE image_id = changed_image) THEN
        PERFORM enqueue_job('consensus', changed_image, jsonb_build_object('image_id', changed_image),
                            'consensus:' || changed_image, 5, now() + consensus_delay());
    END IF;
    RETURN NULL;
END $$;
