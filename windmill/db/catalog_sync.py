"""Keep the services table equal to the catalog, so triggers and views know detectors and voters."""

from __future__ import annotations

import logging

import psycopg
from psycopg.types.json import Jsonb

from windmill.catalog import Catalog
from windmill.db.queries import query

log = logging.getLogger(__name__)
# What the triggers read of a service, in the order sync_services' query returns it; host, port and endpoint are
# left out: a machine may reach a service at an address of its own (a Pi's worker at its model on localhost).
_MEANING = ("category", "service_type", "consensus_enabled", "caption_scoring")


def sync_services(conn: psycopg.Connection, catalog: Catalog) -> None:
    """Upsert every catalog service, in one statement. Services no longer in the catalog stay: old results refer to
    them. A change of what the triggers read is said: with one catalog per machine, the pipeline of every machine
    follows the catalog of whichever worker started last."""
    rows = [{"name": service.name, "category": service.category, "service_type": list(service.service_type),
             "consensus_enabled": service.feeds_consensus, "caption_scoring": service.enable_caption_scoring,
             "host": service.host, "port": service.port, "endpoint": service.endpoint}
            for service in catalog.services]
    with conn.transaction():  # committed here also on a connection that is not in autocommit
        changed = conn.execute(query("sync_services"), {"services": Jsonb(rows)}).fetchall()
    for name, *before in changed:
        now = rows[catalog.names.index(name)]
        what = ", ".join(f"{field} {_shown(old)} → {_shown(now[field])}"
                         for field, old in zip(_MEANING, before, strict=True) if old != now[field])
        log.warning("the catalog here changed what the database holds for %s (%s); the triggers of every machine "
                    "follow it from now on, and a worker that starts with another catalog changes it back: give "
                    "every machine the same catalog (deploy/README.md)", name, what,
                    extra={"action": "catalog_changed"})


def _shown(value: object) -> str:
    if isinstance(value, list):
        return ",".join(value)
    return str(value).lower() if isinstance(value, bool) else str(value)
