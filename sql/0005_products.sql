-- What the products need: merged boxes keyed by their crop (so an unchanged box keeps its row and its
-- postprocessing), one postprocessing row per box and service, consensus after every box change, and
-- caption scoring after every caption.

ALTER TABLE merged_boxes ADD COLUMN crop_key text;
COMMENT ON COLUMN merged_boxes.crop_key IS
    'Class and integer box: equal keys crop the same pixels, so re-harmonization keeps the row.';
CREATE UNIQUE INDEX merged_boxes_image_crop_key ON merged_boxes (image_id, crop_key);

-- Postprocessing of a box is written once per service; a re-run of the same job writes nothing new.
CREATE UNIQUE INDEX postprocessing_box_service_key ON postprocessing (merged_box_id, service)
    WHERE merged_box_id IS NOT NULL;

-- A kept box whose agreement changed (new detector, new confidence) is evidence for the vote too.
CREATE OR REPLACE TRIGGER merged_boxes_enqueue_consensus AFTER INSERT OR UPDATE OR DELETE ON merged_boxes
    FOR EACH ROW EXECUTE FUNCTION enqueue_consensus_for_image();

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
                            'consensus:' || NEW.image_id);
    END IF;
    IF svc.caption_scoring THEN
        PERFORM enqueue_job('caption_score', NEW.image_id,
                            jsonb_build_object('image_id', NEW.image_id, 'service', NEW.service),
                            'caption_score:' || NEW.service || ':' || NEW.image_id);
    END IF;
    RETURN NULL;
END $$;
