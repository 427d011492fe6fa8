-- Two functions that read tables, in PL/pgSQL instead of SQL. PostgreSQL (before 18) plans the body of an SQL
-- function that it cannot inline anew at every call: pg_stat_statements showed latest_success_id planned at each
-- of its four calls per image (the caption score's read and its store), about 0.12 ms each, more than running it.
-- PL/pgSQL keeps each statement's plan for the session. Same arguments, same results, same volatility.

CREATE OR REPLACE FUNCTION latest_success_id(p_image_id bigint, p_service text) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT r.result_id FROM results r
             WHERE r.image_id = p_image_id AND r.service = p_service AND r.status = 'success'
             ORDER BY r.result_created DESC, r.result_id DESC
             LIMIT 1);
END $$;

CREATE OR REPLACE FUNCTION enqueue_postprocessing(p_merged_id bigint) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    RETURN (SELECT count(enqueue(postprocess_job(mb.merged_id, mb.image_id, service)))::integer
              FROM merged_boxes mb
             CROSS JOIN LATERAL unnest(box_postprocessing(mb.merged_data, mb.crop_key)) AS service
             WHERE mb.merged_id = p_merged_id);
END $$;
