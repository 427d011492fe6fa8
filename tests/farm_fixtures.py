"""A running Animal Farm stand-in for tests, on ports no other test uses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from windmill.catalog import Catalog
from windmill.errors import WindmillError
from windmill.simfarm import SimFarm
from windmill.simfarm.ports import restartable_offset


@contextmanager
def running_farm(catalog: Catalog, **options: object) -> Iterator[tuple[SimFarm, Catalog]]:
    """Start a SimFarm on a random port offset; yields it and the catalog pointing at it."""
    highest = max(service.port for service in catalog.services)
    for _ in range(20):
        offset = restartable_offset(highest)  # tests stop and start it again: no outgoing connection takes a port
        farm = SimFarm(catalog, port_offset=offset, **options)
        try:
            farm.start()
        except WindmillError:
            continue  # a port of this offset is taken: try another
        try:
            yield farm, catalog.with_port_offset(offset)
        finally:
            farm.stop()
        return
    raise RuntimeError("no free port range for the stand-in farm")
