-- A vote takes the image's consensus lock and reads its inputs in one call (issue 13 item 6: fewer statements per
-- image).
--
-- The consensus worker sent BEGIN, the lock, the read of everything the vote needs (consensus_inputs), the store
-- and COMMIT. The read moves into consensus_inputs() below, unchanged, and lock_and_read_consensus_inputs() takes
-- the lock and then reads, in two statements of a VOLATILE PL/pgSQL function: the read's snapshot is taken after
-- the lock was granted, so it sees what the vote that held the lock committed (the reason the lock was a statement
-- of its own; the same pattern as queue_vote, sql/0105, and merge_inputs, sql/0108). p_lock_namespace is the
-- consensus namespace of image_lock_key (windmill/locks.py Product, its one home).

-- Everything a vote needs, in one statement (one snapshot): one 'image' row with the box set's revision, what the
-- stored consensus records having read (NULLs when there is none), whether a vote of this job's payload waits for
-- the image's voter tasks and whether the image's deadline job is queued (sql/0104); then the image's successful
-- answers ('answer', the vote keeps the latest per service), its boxes ('box') and the face and pose rows on them
-- ('face_pose': evidence that a person box holds a person), each in id order. The revision recorded is that of the
-- boxes counted.
CREATE TYPE consensus_input AS (kind text, id bigint, service text, status text, data jsonb,
                                 processing_time double precision, created timestamptz, merged_box_id bigint,
                                 source_result_ids bigint[], boxes_revision bigint, postprocessing_ids bigint[],
                                 waits_for_voters boolean, deadline_queued boolean);

CREATE FUNCTION consensus_inputs(p_image_id bigint, p_payload jsonb) RETURNS SETOF consensus_input
LANGUAGE sql STABLE AS $$
SELECT 'image', coalesce(m.revision, 0)::bigint, NULL::text, NULL::text, NULL::jsonb, NULL::double precision,
       NULL::timestamptz, NULL::bigint, c.source_result_ids, c.boxes_revision, c.postprocessing_ids,
       consensus_waits_for_voters(i.image_id, p_payload), consensus_deadline_queued(i.image_id)
  FROM (SELECT p_image_id AS image_id) AS i
  LEFT JOIN merged_images m ON m.image_id = i.image_id
  LEFT JOIN consensus c ON c.image_id = i.image_id
UNION ALL
SELECT 'answer', r.result_id, r.service, r.status, r.data, r.processing_time, r.result_created, NULL, NULL, NULL,
       NULL, NULL, NULL
  FROM results r
 WHERE r.image_id = p_image_id AND r.status = 'success'
UNION ALL
SELECT 'box', b.merged_id, NULL, NULL, b.merged_data, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
  FROM merged_boxes b
 WHERE b.image_id = p_image_id
UNION ALL
SELECT 'face_pose', p.postprocessing_id, p.service, p.status, p.data, NULL, NULL, p.merged_box_id, NULL, NULL, NULL,
       NULL, NULL
  FROM postprocessing p
 WHERE p.image_id = p_image_id AND p.service IN ('face', 'pose')
 ORDER BY 1, 2
$$;

CREATE FUNCTION lock_and_read_consensus_inputs(p_image_id bigint, p_lock_namespace integer, p_payload jsonb)
RETURNS SETOF consensus_input LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(image_lock_key(p_image_id, p_lock_namespace));
    -- A statement of its own, after the lock was granted (the header).
    RETURN QUERY SELECT * FROM consensus_inputs(p_image_id, p_payload);
END $$;
