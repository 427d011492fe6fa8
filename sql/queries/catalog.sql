-- name: sync_services
-- Make every catalog service's row equal to its entry, in one statement (%(services)s: a JSON array of the rows); a
-- row already equal is left alone (no dead tuple). One statement rather than one per service through executemany,
-- whose pipeline, refused (a login that may not write it: `status` as windmill_monitor), left psycopg's warning
-- "error ignored terminating <psycopg.Pipeline …>" before the refusal's one sentence.
INSERT INTO services (name, category, service_type, consensus_enabled, caption_scoring, host, port, endpoint)
SELECT name, category, service_type, consensus_enabled, caption_scoring, host, port, endpoint
  FROM jsonb_to_recordset(%(services)s) AS given (name text, category text, service_type text[],
                                                  consensus_enabled boolean, caption_scoring boolean, host text,
                                                  port integer, endpoint text)
ON CONFLICT (name) DO UPDATE
   SET category = EXCLUDED.category, service_type = EXCLUDED.service_type,
       consensus_enabled = EXCLUDED.consensus_enabled, caption_scoring = EXCLUDED.caption_scoring,
       host = EXCLUDED.host, port = EXCLUDED.port, endpoint = EXCLUDED.endpoint, updated_at = now()
 WHERE (services.category, services.service_type, services.consensus_enabled, services.caption_scoring,
        services.host, services.port, services.endpoint)
       IS DISTINCT FROM (EXCLUDED.category, EXCLUDED.service_type, EXCLUDED.consensus_enabled,
        EXCLUDED.caption_scoring, EXCLUDED.host, EXCLUDED.port, EXCLUDED.endpoint)
