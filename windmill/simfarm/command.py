"""`windmill-cli farm serve`: options → a running SimFarm, and what each service went through when it stops."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from windmill.catalog import Catalog
from windmill.simfarm.capacity import LoadStats
from windmill.simfarm.contract import PROFILES
from windmill.simfarm.latency import load_profile
from windmill.simfarm.server import SimFarm


def serve_command(
    catalog: Catalog,
    selection: str = "full_catalog",
    port_offset: int = 0,
    latency_ms: float = 0.0,
    error_rate: float = 0.0,
    timeout_rate: float = 0.0,
    malformed_rate: float = 0.0,
    seed: int = 0,
    annotation_dirs: list[Path] | None = None,
    *,
    latency_profile: str | None = None,
    cache: bool = True,
    score_uploads: bool = False,
    host: str = "127.0.0.1",
    echo: Callable[[str], None] | None = None,
) -> None:
    """Resolve the selection and the latency profile, serve, print where; block until a signal, then print
    per service how many requests it took and the most it held at once."""
    echo = echo or functools.partial(print, flush=True)
    services = [service.name for service in catalog.select(selection)]
    profile = load_profile(latency_profile, PROFILES) if latency_profile else None
    farm = SimFarm(catalog, services=services, host=host, port_offset=port_offset, latency_ms=latency_ms,
                   error_rate=error_rate, timeout_rate=timeout_rate, malformed_rate=malformed_rate, seed=seed,
                   annotation_dirs=annotation_dirs, latency_profile=profile, cache=cache,
                   score_uploads=score_uploads)
    farm.start()
    for name in services:
        echo(f"{name:<14} {farm.base_url(name)}{farm.services[name].endpoint}")
    answers = "every answer computed per request" if not cache else "answers cached per image"
    echo(f"simulating {len(services)} services with {len(farm.index)} annotated images; latency: "
         f"{farm.latency.name}; {answers}; Ctrl-C stops")
    farm.serve_forever()
    for line in load_summary(farm.load_stats()):
        echo(line)


def load_summary(stats: dict[str, LoadStats]) -> list[str]:
    """One line per service that was called: requests, the most held at once, how many waited for capacity."""
    return [f"{name:<14} {load.requests} requests, at most {load.peak_held} at once, "
            f"{load.waited} waited for capacity" for name, load in stats.items() if load.requests]
