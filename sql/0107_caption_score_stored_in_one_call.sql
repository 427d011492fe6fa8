-- A caption score is stored in one call (issue 13 item 6: PostgreSQL's CPU per image, fewer statements).
--
-- The caption_score role stored a score as four round trips: BEGIN, the image's caption-score lock, the replacing
-- insert (sql/queries/caption_score.sql's former store_caption_score), COMMIT; two scores per image. Now one call of
-- the function below, in autocommit: its transaction is the call.
--
-- Why the lock and the insert stay two statements. The insert asks whether the scored caption is still the
-- source's latest and deletes the previous score; under READ COMMITTED its snapshot must be taken after the lock
-- was granted, so that it sees the score the lock's previous holder committed (otherwise two stores of one image
-- and source, committing together, would each delete nothing and leave two scores). Each statement of a VOLATILE
-- PL/pgSQL function takes a new snapshot: the insert runs after the lock, as it did as a statement of its own.
-- p_lock_namespace is the caption score's namespace of image_lock_key (windmill/locks.py Product, its one home).

CREATE FUNCTION store_caption_score(p_image_id bigint, p_lock_namespace integer, p_source text, p_service text,
                                    p_source_result_id bigint, p_data jsonb, p_status text, p_error_message text,
                                    p_processing_time double precision, p_worker_id text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    stored bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(image_lock_key(p_image_id, p_lock_namespace));
    -- A statement of its own, after the lock was granted (the header). A score replaces the source's previous one,
    -- and only the score of the source's latest caption is stored: a slow score of an older caption stores nothing.
    WITH current_caption AS (
        SELECT 1 WHERE latest_success_id(p_image_id, p_source) = p_source_result_id
    ), previous AS (
        DELETE FROM postprocessing
         WHERE image_id = p_image_id AND service = p_service AND merged_box_id IS NULL
           AND EXISTS (SELECT 1 FROM current_caption)
    )
    INSERT INTO postprocessing (image_id, service, data, status, error_message, processing_time, worker_id,
                                source_result_id)
    SELECT p_image_id, p_service, p_data, p_status, p_error_message, p_processing_time, p_worker_id,
           p_source_result_id
      FROM current_caption
    RETURNING postprocessing_id INTO stored;
    RETURN stored;
END $$;
