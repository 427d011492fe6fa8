-- name: sync_service
-- Make one service's row equal to its catalog entry; a row already equal is left alone (no dead tuple).
INSERT INTO services (name, category, service_type, consensus_enabled, caption_scoring, host, port, endpoint)
VALUES (%(name)s, %(category)s, %(service_type)s, %(consensus_enabled)s, %(caption_scoring)s,
        %(host)s, %(port)s, %(endpoint)s)
ON CONFLICT (name) DO UPDATE
   SET category = EXCLUDED.category, service_type = EXCLUDED.service_type,
       consensus_enabled = EXCLUDED.consensus_enabled, caption_scoring = EXCLUDED.caption_scoring,
       host = EXCLUDED.host, port = EXCLUDED.port, endpoint = EXCLUDED.endpoint, updated_at = now()
 WHERE (services.category, services.service_type, services.consensus_enabled, services.caption_scoring,
        services.host, services.port, services.endpoint)
       IS DISTINCT FROM (EXCLUDED.category, EXCLUDED.service_type, EXCLUDED.consensus_enabled,
        EXCLUDED.caption_scoring, EXCLUDED.host, EXCLUDED.port, EXCLUDED.endpoint)
