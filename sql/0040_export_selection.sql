-- The images an export walks through, in one place: `export` reads them by pages and counts them first (its
-- progress bar), and both must select the same images. A plain STABLE SQL function of one SELECT: the planner
-- inlines it into the calling query, so a page still reads images by its primary key from the position on.
-- After p_after_id, of one group (NULL: all), and with p_since only images with something new since then (added,
-- an answer, a change of its boxes, postprocessing, a consensus); at most p_limit (NULL: all), in id order.
CREATE FUNCTION export_selection(p_after_id bigint, p_group text, p_since timestamptz, p_limit bigint)
RETURNS SETOF images LANGUAGE sql STABLE AS $$
    SELECT i.*
      FROM images i
     WHERE i.image_id > p_after_id
       AND (p_group IS NULL OR i.image_group = p_group)
       AND (p_since IS NULL
            OR i.image_created >= p_since
            OR EXISTS (SELECT 1 FROM results r WHERE r.image_id = i.image_id AND r.result_created >= p_since)
            OR EXISTS (SELECT 1 FROM merged_images m WHERE m.image_id = i.image_id AND m.changed_at >= p_since)
            OR EXISTS (SELECT 1 FROM postprocessing p WHERE p.image_id = i.image_id AND p.result_created >= p_since)
            OR EXISTS (SELECT 1 FROM consensus c
                        WHERE c.image_id = i.image_id AND c.consensus_created >= p_since))
     ORDER BY i.image_id
     LIMIT p_limit
$$;
