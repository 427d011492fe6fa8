"""Keep the services table equal to the catalog, so triggers and views know detectors and voters."""

from __future__ import annotations

import psycopg

from windmill.catalog import Catalog
from windmill.db.queries import query


def sync_services(conn: psycopg.Connection, catalog: Catalog) -> None:
    """Upsert every catalog service. Services no longer in the catalog stay: old results refer to them."""
    with conn.transaction(), conn.cursor() as cursor:
        cursor.executemany(
            query("sync_service"),
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
