-- Products record the rows they were computed from, so that "stale" means "its inputs are not the current ones"
-- (DESIGN rule 7), compared by ids, never by clocks: a transaction's timestamps are its start, so a late commit
-- looks older than the product that missed it.
--
-- Boxes already keep the answers they read (merged_images.source_result_ids). The box set gets a revision, bumped
-- by every merge that inserted, updated or deleted a box, so that a consensus can say which box set it counted.
-- The consensus records the answers it voted on (the latest success per service), the box revision and the
-- face/pose rows it read. A caption score records the caption it scored, as a column SQL can compare.

ALTER TABLE merged_images ADD COLUMN revision bigint NOT NULL DEFAULT 0;
COMMENT ON COLUMN merged_images.revision IS
    'Bumped by every recompute that changed the box set (0: never changed); a consensus records the revision it read.';
-- A set that holds boxes has changed at least once.
UPDATE merged_images SET revision = 1 WHERE boxes > 0;

ALTER TABLE consensus
    ADD COLUMN source_result_ids bigint[],
    ADD COLUMN boxes_revision bigint,
    ADD COLUMN postprocessing_ids bigint[];
COMMENT ON COLUMN consensus.source_result_ids IS
    'The answers voted on: the latest success row of each service, sorted (NULL: not recorded, recompute).';
COMMENT ON COLUMN consensus.boxes_revision IS 'merged_images.revision of the box set counted (0: none).';
COMMENT ON COLUMN consensus.postprocessing_ids IS 'The face/pose postprocessing rows read, sorted.';
-- Rows voted before this migration: what they voted on is in their debug section; the box set and face/pose rows
-- they saw are not known, so they stay NULL and the backfill recomputes them, a page at a time.
UPDATE consensus
   SET source_result_ids = ARRAY(SELECT jsonb_array_elements_text(consensus_data->'debug'->'result_ids')::bigint
                                  ORDER BY 1)
 WHERE jsonb_typeof(consensus_data->'debug'->'result_ids') = 'array';

ALTER TABLE postprocessing ADD COLUMN source_result_id bigint;
COMMENT ON COLUMN postprocessing.source_result_id IS
    'Caption scores: the caption (results row) that was scored. NULL for box postprocessing.';
UPDATE postprocessing SET source_result_id = (data->>'source_result_id')::bigint
 WHERE merged_box_id IS NULL AND service LIKE 'caption\_score\_%' AND data ? 'source_result_id';

-- The latest successful answer of a service for an image, as the products pick it: by creation, then by id. The
-- caption scorer reads it, and stores a score only while its caption is still this one (newest caption wins).
CREATE FUNCTION latest_success_id(p_image_id bigint, p_service text) RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT r.result_id FROM results r
     WHERE r.image_id = p_image_id AND r.service = p_service AND r.status = 'success'
     ORDER BY r.result_created DESC, r.result_id DESC
     LIMIT 1
$$;
