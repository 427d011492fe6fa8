"""Latency profiles of the stand-in: how long each simulated service takes and how many requests it serves at once.

A profile is a JSON document (a bundled one by name, e.g. `gpu`, or a file):

    {"description": "...",
     "default": {"mean_ms": 50, "jitter": 0.3, "capacity": 2},
     "services": {"yolov8": {"mean_ms": 20, "jitter": 0.2, "capacity": 4, "note": "why these figures"}}}

`mean_ms` is the mean service time; `jitter` the sigma of a lognormal around it (0: always the mean; 0.3: most
draws within ±35 %, a tail of slow ones, as inference times have); `capacity` how many requests the service
works on at once (a GPU server's worker count), the rest waiting in line; absent, no limit. Services the profile
does not name take `default`, or no time at all without one. Draws are a pure function of (seed, service, the
request's number), like the faults.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from statistics import NormalDist
from typing import Any

from windmill.errors import WindmillError
from windmill.simfarm.determinism import unit

_TIMING_FIELDS = ("mean_ms", "jitter", "capacity", "note")
_PROFILE_FIELDS = ("description", "default", "services")
_MAX_JITTER = 2.0  # sigma 2 puts the 99th percentile ~100× over the median: beyond it is a typo
_STANDARD_NORMAL = NormalDist()


class ProfileError(WindmillError):
    """A latency profile that cannot be used, with the reason in one sentence."""


@dataclass(frozen=True)
class ServiceTiming:
    """One service's time per request and how many requests it serves at once (None: any number)."""

    mean_ms: float
    jitter: float = 0.0
    capacity: int | None = None

    def seconds(self, draw: float) -> float:
        """The service time for a uniform draw in [0, 1): lognormal with this mean, or the mean when no jitter."""
        if self.mean_ms <= 0:
            return 0.0
        if self.jitter == 0:
            return self.mean_ms / 1000.0
        # Lognormal with sigma = jitter whose *mean* (not median) is mean_ms: mu = ln(mean) - sigma²/2.
        mu = math.log(self.mean_ms) - self.jitter**2 / 2
        quantile = _STANDARD_NORMAL.inv_cdf(min(max(draw, 1e-9), 1 - 1e-9))
        return math.exp(mu + self.jitter * quantile) / 1000.0


@dataclass(frozen=True)
class LatencyProfile:
    name: str
    services: Mapping[str, ServiceTiming] = field(default_factory=dict)
    default: ServiceTiming | None = None
    description: str = ""

    def timing(self, service: str) -> ServiceTiming | None:
        return self.services.get(service, self.default)

    @classmethod
    def constant(cls, latency_ms: float) -> LatencyProfile:
        """Every service the same fixed time and no capacity limit (`farm serve --latency-ms N`)."""
        if latency_ms < 0:
            raise ProfileError(f"latency must not be negative, got {latency_ms} ms")
        return cls(f"constant {latency_ms:g} ms", default=ServiceTiming(latency_ms) if latency_ms > 0 else None)


def sample_seconds(timing: ServiceTiming, seed: int, service: str, index: int) -> float:
    """The service time of the index-th request to this service."""
    return timing.seconds(unit(seed, service, index, "latency"))


def bundled_profiles() -> dict[str, Path]:
    """Profiles shipped with Windmill (windmill/simfarm/profiles/NAME.json), by name."""
    folder = resources.files("windmill.simfarm").joinpath("profiles")
    return {Path(entry.name).stem: Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".json")}


def load_profile(name_or_path: str, known_services: Iterable[str]) -> LatencyProfile:
    """A bundled profile by name, or a profile file; any problem is a ProfileError naming the file and the field."""
    bundled = bundled_profiles()
    path = bundled.get(name_or_path) or Path(name_or_path)
    if name_or_path not in bundled and not path.is_file():
        raise ProfileError(f"latency profile {name_or_path!r} is neither a bundled profile "
                           f"({', '.join(sorted(bundled))}) nor a file")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as bad:
        raise ProfileError(f"latency profile {path} is not valid JSON: {bad.msg} at line {bad.lineno}") from None
    except (OSError, UnicodeDecodeError) as problem:
        raise ProfileError(f"cannot read latency profile {path}: {problem}") from None
    return parse_profile(document, name=path.stem, source=str(path), known_services=known_services)


def parse_profile(document: Any, *, name: str, source: str, known_services: Iterable[str]) -> LatencyProfile:
    known = list(known_services)
    if not isinstance(document, dict):
        raise ProfileError(f"latency profile {source} must be a JSON object")
    _no_unknown_fields(document, _PROFILE_FIELDS, f"latency profile {source}")
    services = document.get("services", {})
    if not isinstance(services, dict):
        raise ProfileError(f'latency profile {source}: "services" must be an object of service name → timing')
    unknown = [service for service in services if service not in known]
    if unknown:
        raise ProfileError(f"latency profile {source} names unknown service {', '.join(map(repr, unknown))}; "
                           f"the stand-in simulates {', '.join(known)}")
    default = document.get("default")
    return LatencyProfile(
        name=name,
        services={service: _timing(entry, f"latency profile {source}, service {service!r}")
                  for service, entry in services.items()},
        default=None if default is None else _timing(default, f"latency profile {source}, default"),
        description=str(document.get("description", "")),
    )


def _timing(entry: Any, where: str) -> ServiceTiming:
    if not isinstance(entry, dict):
        raise ProfileError(f'{where} must be an object such as {{"mean_ms": 20, "jitter": 0.2, "capacity": 4}}')
    _no_unknown_fields(entry, _TIMING_FIELDS, where)
    if "mean_ms" not in entry:
        raise ProfileError(f"{where} lacks mean_ms (the mean time per request in milliseconds)")
    mean_ms = _number(entry["mean_ms"], where, "mean_ms")
    jitter = _number(entry.get("jitter", 0.0), where, "jitter")
    if mean_ms < 0:
        raise ProfileError(f"{where}: mean_ms must not be negative, got {mean_ms:g}")
    if not 0 <= jitter <= _MAX_JITTER:
        raise ProfileError(f"{where}: jitter must lie between 0 and {_MAX_JITTER:g} (the lognormal's sigma), "
                           f"got {jitter:g}")
    capacity = entry.get("capacity")
    if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1):
        raise ProfileError(f"{where}: capacity must be a whole number of at least 1 (requests served at once), "
                           f"got {capacity!r}")
    return ServiceTiming(mean_ms, jitter, capacity)


def _number(value: Any, where: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProfileError(f"{where}: {name} must be a number, got {value!r}")
    return float(value)


def _no_unknown_fields(entry: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = [key for key in entry if key not in allowed]
    if unknown:
        raise ProfileError(f"{where} has unknown field {', '.join(map(repr, unknown))}; "
                           f"expected {', '.join(allowed)}")
