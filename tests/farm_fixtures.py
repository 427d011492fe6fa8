"""A running Animal Farm stand-in for tests, on ports no other test uses."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

from windmill.catalog import Catalog
from windmill.errors import WindmillError
from windmill.simfarm import SimFarm


@contextmanager
def running_farm(catalog: Catalog, **options: object) -> Iterator[tuple[SimFarm, Catalog]]:
    """Start a SimFarm on a random port offset; yields it and the catalog pointing at it."""
    for _ in range(20):
        offset = random.randrange(10_000, 50_000, 100)
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
