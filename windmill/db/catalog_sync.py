"""Keep the services table equal to the catalog, so triggers and views know detectors and voters."""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb

from windmill.catalog import Catalog
from windmill.db.queries import query


def sync_services(conn: psycopg.Connection, catalog: Catalog) -> None:
    """Upsert every catalog service, in one statement. Services no longer in the catalog stay: old results refer to
    them."""
    rows = [{"name": service.name, "category": service.category, "service_type": list(service.service_type),
             "consensus_enabled": service.feeds_consensus, "caption_scoring": service.enable_caption_scoring,
             "host": service.host, "port": service.port, "endpoint": service.endpoint}
            for service in catalog.services]
    with conn.transaction():  # committed here also on a connection that is not in autocommit
        conn.execute(query("sync_services"), {"services": Jsonb(rows)})
