"""The Animal Farm client of a worker process: built once by the launcher and handed to every role it runs."""

from __future__ import annotations

from windmill.catalog import Catalog
from windmill.db.connect import Database
from windmill.farm import FarmClient
from windmill.farm.client import CallObserver
from windmill.farm.fleet import FleetSlots
from windmill.farm.limits import ConcurrencyLimits
from windmill.farm.outages import ServiceOutages
from windmill.settings import Settings


def process_farm_client(settings: Settings, catalog: Catalog, database: Database, *,
                        observer: CallObserver | None = None) -> FarmClient:
    """The Animal Farm client a worker process builds once and hands every role (RoleContext.farm); the process
    closes it after its roles. Services with a fleet_max_concurrency take their places through the database; calls to
    a service that is down wait for it (WINDMILL_OUTAGE_WAIT_S). `observer` is told of every call (the process's
    metrics)."""
    fleet = None
    if any(service.fleet_max_concurrency for service in catalog.services):
        fleet = FleetSlots(lambda: database.connect(application_name="windmill-service-slots"))
    return FarmClient(catalog, allow_private_urls=settings.allow_private_urls, observer=observer,
                      limits=ConcurrencyLimits(catalog.services, fleet=fleet),
                      outages=ServiceOutages(settings.outage_wait_s))
