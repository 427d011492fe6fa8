-- Box changes and face/pose answers enqueue consensus at commit, not at each row. Row by row, a merger
-- replacing boxes held the image's consensus dedupe key while it waited for a box row that a postprocessing
-- insert (whose own trigger waited for that key) had locked: a deadlock. Deferred to commit, the key is taken
-- only after every row lock is held.
DROP TRIGGER merged_boxes_enqueue_consensus ON merged_boxes;
DROP TRIGGER postprocessing_enqueue_consensus ON postprocessing;

CREATE CONSTRAINT TRIGGER merged_boxes_enqueue_consensus AFTER INSERT OR UPDATE OR DELETE ON merged_boxes
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION enqueue_consensus_for_image();

CREATE CONSTRAINT TRIGGER postprocessing_enqueue_consensus AFTER INSERT ON postprocessing
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.service IN ('face', 'pose')) EXECUTE FUNCTION enqueue_consensus_for_image();
