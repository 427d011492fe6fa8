"""The service catalog: service_config.json (the seed's format) → services, categories and selections."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from windmill.errors import CatalogError
from windmill.packaged import packaged_dir

CATEGORIES = ("primary", "spatial_only", "postprocessing")
SELECTION_KEYWORDS = {
    "all": "every primary service",
    "primary": "every primary service",
    "spatial_only": "the bbox-region services (face, pose)",
    "full_catalog": "every service in the catalog",
}
DEFAULT_TIMEOUT_S = 30.0
# How a service is given an image (spec §2.2): the bytes Windmill read, as a multipart upload; `?url=`, the service
# downloading the image itself; `?file=`, the service reading the image's path on its own disk (a shared one).
REQUEST_MODES = ("upload", "url", "file")


@dataclass(frozen=True)
class Service:
    """One Animal Farm service as the catalog describes it."""

    name: str
    host: str
    port: int
    endpoint: str
    category: str
    service_type: tuple[str, ...]
    description: str = ""
    queue_prefix: str = "queue_"
    enable_triggers: bool = False
    enable_caption_scoring: bool = False
    enable_consensus_triggers: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S
    request_mode: str = "upload"
    prefetch: int = 4
    # Requests in flight to this service from one worker process, whichever roles call it; None: no limit.
    max_concurrency: int | None = None
    # The same across every worker process of the database (places held in PostgreSQL); None: no limit.
    fleet_max_concurrency: int | None = None

    @property
    def queue_name(self) -> str:
        return f"{self.queue_prefix}{self.name}"

    @property
    def is_detector(self) -> bool:
        """A detector's boxes feed harmonization: its service_type lists `spatial`."""
        return "spatial" in self.service_type

    @property
    def feeds_consensus(self) -> bool:
        """Every answer the vote reads must recompute it: the vote lists every answering service with its time.
        (The reference's `enable_consensus_triggers` left colors and metadata out, so an image whose last answer
        came from one of them kept a stale consensus; the flag is read but no longer decides.)"""
        return self.category != "postprocessing"

    @property
    def takes_image_tasks(self) -> bool:
        """An image can be sent to it as a task of its own. A postprocessing service (caption scoring) cannot: it
        scores what other services answered, and its jobs follow those answers."""
        return self.category != "postprocessing"

    @property
    def evidence_type(self) -> str:
        """The voting evidence type is the first service_type item, as in the reference."""
        return self.service_type[0] if self.service_type else "other"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def input_for(self, image_path: str | None, image_url: str | None) -> str:
        """How this service is given an image: its request_mode when the image has what that mode needs (a path
        for "file", a URL for "url"); a service that reads images itself downloads one known only by its URL;
        else "upload", the bytes Windmill read."""
        if self.request_mode == "file" and image_path:
            return "file"
        if self.request_mode in ("url", "file") and image_url:
            return "url"
        return "upload"

    @classmethod
    def from_config(cls, name: str, entry: dict[str, Any]) -> Service:
        try:
            category = entry["category"]
            if category not in CATEGORIES:
                raise CatalogError(
                    f"service {name!r} has category {category!r}; expected one of {', '.join(CATEGORIES)}"
                )
            mode = entry.get("request_mode", "upload")
            if mode not in REQUEST_MODES:
                raise CatalogError(
                    f"service {name!r} has request_mode {mode!r}; expected one of {', '.join(REQUEST_MODES)}"
                )
            return cls(
                name=name,
                host=str(entry["host"]),
                port=int(entry["port"]),
                endpoint=str(entry["endpoint"]),
                category=category,
                service_type=tuple(
                    part.strip() for part in str(entry.get("service_type", "other")).split(",") if part.strip()
                ),
                description=str(entry.get("description", "")),
                queue_prefix=str(entry.get("queue_prefix", "queue_")),
                enable_triggers=bool(entry.get("enable_triggers", False)),
                enable_caption_scoring=bool(entry.get("enable_caption_scoring", False)),
                enable_consensus_triggers=bool(entry.get("enable_consensus_triggers", False)),
                timeout_s=_timeout(name, entry.get("timeout_s", DEFAULT_TIMEOUT_S)),
                request_mode=mode,
                prefetch=int(entry.get("prefetch", 4)),
                max_concurrency=_concurrency(name, "max_concurrency", entry.get("max_concurrency")),
                fleet_max_concurrency=_concurrency(name, "fleet_max_concurrency", entry.get("fleet_max_concurrency")),
            )
        except KeyError as missing:
            raise CatalogError(f"service {name!r} lacks the required field {missing.args[0]!r}") from None
        except (TypeError, ValueError) as bad:
            raise CatalogError(f"service {name!r} has an invalid field: {bad}") from None


def _timeout(name: str, value: Any) -> float:
    """timeout_s: seconds a call may take, a finite number above 0 (0, -1 or NaN passed, then every call failed or
    none ever timed out)."""
    seconds = float(value)  # a string that is no number: the ValueError below names the field
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds <= 0:
        raise CatalogError(f"service {name!r} has timeout_s {value!r}; expected the seconds a call may take, a "
                           "number above 0")
    return seconds


def _concurrency(name: str, field: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CatalogError(f"service {name!r} has {field} {value!r}; expected a whole number of at least 1 "
                           "(requests in flight at once), or no entry for no limit")
    return value


@dataclass(frozen=True)
class Catalog:
    """Every configured service, in the file's key order (the order the producer keeps)."""

    services: tuple[Service, ...]

    def __getitem__(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise CatalogError(f"unknown service {name!r}; valid services: {', '.join(self.names)}")

    def __contains__(self, name: object) -> bool:
        return any(service.name == name for service in self.services)

    @property
    def names(self) -> list[str]:
        return [service.name for service in self.services]

    def in_category(self, category: str) -> list[Service]:
        return [service for service in self.services if service.category == category]

    def with_port_offset(self, offset: int) -> Catalog:
        """The same services on port + offset (a stand-in farm started with --port-offset); a CatalogError when a
        port falls outside 1–65535 (every call would then fail as a name that does not resolve)."""
        for service in self.services:
            if not 0 < service.port + offset < 65536:
                raise CatalogError(f"service {service.name}'s port {service.port} + WINDMILL_PORT_OFFSET {offset} is "
                                   f"{service.port + offset}, not a port (1–65535)")
        return Catalog(tuple(replace(service, port=service.port + offset) for service in self.services))

    @property
    def caption_sources(self) -> list[str]:
        """The services whose captions are scored as they are answered."""
        return [service.name for service in self.services if service.enable_caption_scoring]

    @property
    def detectors(self) -> list[Service]:
        return [service for service in self.services if service.is_detector]

    def select_for_tasks(self, selection: str | Sequence[Service]) -> list[Service]:
        """The services of a selection that image tasks are queued for (submit) or a service worker runs.
        `full_catalog` leaves out those that take none; naming one is an error that says where its work comes from
        (the reference queued such tasks, which nothing ever consumed)."""
        services = self.select(selection) if isinstance(selection, str) else list(selection)
        refused = [service.name for service in services if not service.takes_image_tasks]
        if refused and not (isinstance(selection, str) and selection.strip() == "full_catalog"):
            raise CatalogError(
                f"{', '.join(refused)} takes no image task: it scores the captions of "
                f"{', '.join(self.caption_sources) or 'the captioning services'} as they are answered (the "
                f"caption_score role runs it; `windmill-cli backfill` queues the scores that are missing)")
        return [service for service in services if service.takes_image_tasks]

    def select(self, selection: str) -> list[Service]:
        """Resolve `all`/`primary`, `spatial_only`, `full_catalog` or a comma list; unknown names are an error."""
        keyword = selection.strip()
        if keyword in ("all", "primary"):
            return self.in_category("primary")
        if keyword == "spatial_only":
            return self.in_category("spatial_only")
        if keyword == "full_catalog":
            return list(self.services)
        names = [part.strip() for part in keyword.split(",") if part.strip()]
        if not names:
            raise CatalogError("no service selected; name services or use all, primary, spatial_only, full_catalog")
        unknown = [name for name in names if name not in self]
        if unknown:
            raise CatalogError(
                f"unknown service {', '.join(map(repr, unknown))}; valid services: {', '.join(self.names)}"
                f" (or the sets {', '.join(SELECTION_KEYWORDS)})"
            )
        return [self[name] for name in dict.fromkeys(names)]

    @classmethod
    def from_dict(cls, document: Any) -> Catalog:
        if not isinstance(document, dict) or not isinstance(document.get("services"), dict):
            raise CatalogError('the service catalog must be a JSON object with a "services" object')
        return cls(tuple(Service.from_config(name, entry) for name, entry in document["services"].items()))


def bundled_catalog_path() -> Path:
    """The catalog shipped with Windmill (deploy/service_config.json, packaged as windmill.deploy)."""
    return Path(str(packaged_dir("deploy").joinpath("service_config.json")))


def configured_catalog(service_config: Path | None) -> Catalog:
    """The catalog a command uses: WINDMILL_SERVICE_CONFIG when set, else ./service_config.json when present (the
    seed's habit), else the bundled one."""
    if service_config is None and Path("service_config.json").is_file():
        service_config = Path("service_config.json")
    return load_catalog(service_config)


def load_catalog(path: Path | None = None) -> Catalog:
    """Load a catalog file; without a path, the bundled one with the reference ports."""
    path = path or bundled_catalog_path()
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(f"service catalog {path} does not exist") from None
    except json.JSONDecodeError as bad:
        raise CatalogError(f"service catalog {path} is not valid JSON: {bad.msg} at line {bad.lineno}") from None
    return Catalog.from_dict(document)
