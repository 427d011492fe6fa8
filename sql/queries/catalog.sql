-- name: sync_services
-- Make every catalog service's row equal to its entry, in one statement (%(services)s: a JSON array of the rows); a
-- row already equal is left alone (no dead tuple). One statement rather than one per service through executemany,
-- whose pipeline, refused (a login that may not write it: `status` as windmill_monitor), left psycopg's warning
-- "error ignored terminating <psycopg.Pipeline …>" before the refusal's one sentence. Returns, per service whose
-- meaning to the triggers changed (category, service_type, consensus, caption scoring: not its host, port or
-- endpoint, which a machine may have its own of), what it was before: another machine's catalog differed.
WITH given AS (
    SELECT name, category, service_type, consensus_enabled, caption_scoring, host, port, endpoint
      FROM jsonb_to_recordset(%(services)s) AS given (name text, category text, service_type text[],
                                                      consensus_enabled boolean, caption_scoring boolean, host text,
                                                      port integer, endpoint text)),
before AS (  -- the statement's snapshot: the rows as they were before the upsert below
    SELECT s.name, s.category, s.service_type, s.consensus_enabled, s.caption_scoring
      FROM services s JOIN given USING (name)),
synced AS (
    INSERT INTO services (name, category, service_type, consensus_enabled, caption_scoring, host, port, endpoint)
    SELECT name, category, service_type, consensus_enabled, caption_scoring, host, port, endpoint FROM given
    ON CONFLICT (name) DO UPDATE
       SET category = EXCLUDED.category, service_type = EXCLUDED.service_type,
           consensus_enabled = EXCLUDED.consensus_enabled, caption_scoring = EXCLUDED.caption_scoring,
           host = EXCLUDED.host, port = EXCLUDED.port, endpoint = EXCLUDED.endpoint, updated_at = now()
     WHERE (services.category, services.service_type, services.consensus_enabled, services.caption_scoring,
            services.host, services.port, services.endpoint)
           IS DISTINCT FROM (EXCLUDED.category, EXCLUDED.service_type, EXCLUDED.consensus_enabled,
            EXCLUDED.caption_scoring, EXCLUDED.host, EXCLUDED.port, EXCLUDED.endpoint)
    RETURNING name, category, service_type, consensus_enabled, caption_scoring)
SELECT b.name, b.category, b.service_type, b.consensus_enabled, b.caption_scoring
  FROM synced JOIN before b USING (name)
 WHERE (b.category, b.service_type, b.consensus_enabled, b.caption_scoring)
       IS DISTINCT FROM (synced.category, synced.service_type, synced.consensus_enabled, synced.caption_scoring)
 ORDER BY b.name
