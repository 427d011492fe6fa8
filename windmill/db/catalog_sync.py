"""Keep the services table equal to the catalog, so triggers and views know detectors and voters."""

from __future__ import annotations

import psycopg

from windmill.catalog import Catalog

_UPSERT = """
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
"""


def sync_services(conn: psycopg.Connection, catalog: Catalog) -> None:
    """Upsert every catalog service. Services no longer in the catalog stay: old results refer to them."""
    with conn.transaction(), conn.cursor() as cursor:
        cursor.executemany(
            _UPSERT,
            [
                {
                    "name": service.name,
                    "category": service.category,
                    "service_type": list(service.service_type),
                    "consensus_enabled": service.feeds_consensus,
                    "caption_scoring": service.enable_caption_scoring,
                    "host": service.host,
                    "port": service.port,
                    "endpoint": service.endpoint,
                }
                for service in catalog.services
            ],
        )
