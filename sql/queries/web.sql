-- name: web_gallery_page
-- A page of the gallery, newest first, before a position (keyset): each image's completeness (view
-- image_completeness) and its consensus' three best emoji. Filters: group, an emoji of the consensus, and status
-- 'failed' (a service's latest answer failed) or 'incomplete' (something is missing or pending). An emoji matches
-- with or without its presentation selectors (🍽 and 🍽️ are one: typed, pasted or followed from a link).
SELECT ic.image_id, ic.image_filename, ic.image_group, ic.complete, ic.failed, ic.missing, ic.boxes,
       ic.pending_jobs,
       (SELECT coalesce(array_agg(item->>'emoji' ORDER BY ordinality), '{}')
          FROM jsonb_array_elements(c.consensus_data->'votes'->'consensus') WITH ORDINALITY AS t(item, ordinality)
         WHERE ordinality <= 3) AS top_emoji
  FROM image_completeness ic
  LEFT JOIN consensus c ON c.image_id = ic.image_id
 WHERE (%(before)s::bigint IS NULL OR ic.image_id < %(before)s::bigint)
   AND (%(group)s::text IS NULL OR ic.image_group = %(group)s::text)
   AND (%(emoji)s::text IS NULL
        OR EXISTS (SELECT 1
                     FROM jsonb_array_elements(c.consensus_data->'votes'->'consensus') AS vote(item)
                    WHERE translate(vote.item->>'emoji', U&'\FE0E\FE0F', '')
                          = translate(%(emoji)s::text, U&'\FE0E\FE0F', '')))
   AND (%(status)s::text IS NULL
        OR (%(status)s::text = 'failed' AND cardinality(ic.failed) > 0)
        OR (%(status)s::text = 'incomplete' AND NOT ic.complete))
 ORDER BY ic.image_id DESC
 LIMIT %(limit)s

-- name: web_groups
-- The image groups, read as a loose index scan (one probe of images_group_idx per group, not every image).
WITH RECURSIVE groups AS (
    (SELECT image_group FROM images WHERE image_group IS NOT NULL ORDER BY image_group LIMIT 1)
    UNION ALL
    SELECT (SELECT i.image_group FROM images i WHERE i.image_group > g.image_group ORDER BY i.image_group LIMIT 1)
      FROM groups g
     WHERE g.image_group IS NOT NULL
)
SELECT image_group FROM groups WHERE image_group IS NOT NULL LIMIT 500
