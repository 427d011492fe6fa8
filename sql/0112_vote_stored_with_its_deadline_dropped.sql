-- A vote stores its consensus and drops the image's deadline job in one call (issue 13 item 6: fewer statements per
-- image).
--
-- A vote not put off drops the image's waiting deadline job (sql/0104) and, when the rows it read changed, stores
-- the consensus: two statements, about one per image each. store_vote() below does both; the drop alone (a vote that
-- found nothing changed) keeps its own statement. The order is unchanged: the drop, then the store, in the vote's
-- transaction under its lock.

CREATE FUNCTION store_vote(p_image_id bigint, p_consensus_data jsonb, p_processing_time double precision,
                           p_worker_id text, p_source_result_ids bigint[], p_boxes_revision bigint,
                           p_postprocessing_ids bigint[], p_drop_deadline boolean) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_drop_deadline THEN
        PERFORM drop_consensus_deadline(p_image_id);
    END IF;
    -- One row per image, replaced by every recompute, with the inputs it was computed from.
    INSERT INTO consensus (image_id, consensus_data, processing_time, worker_id, source_result_ids, boxes_revision,
                           postprocessing_ids)
    VALUES (p_image_id, p_consensus_data, p_processing_time, p_worker_id, p_source_result_ids, p_boxes_revision,
            p_postprocessing_ids)
    ON CONFLICT (image_id) DO UPDATE
       SET consensus_data = EXCLUDED.consensus_data, processing_time = EXCLUDED.processing_time,
           worker_id = EXCLUDED.worker_id, consensus_created = now(), source_result_ids = EXCLUDED.source_result_ids,
           boxes_revision = EXCLUDED.boxes_revision, postprocessing_ids = EXCLUDED.postprocessing_ids;
END $$;
