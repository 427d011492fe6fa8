"""Where Prometheus finds the workers of a machine: the named workers (`workers start`, `workers run NAME`) serve
their metrics on WINDMILL_METRICS_PORT plus their index in the list of worker names, and each worker serving metrics
writes its own target file, `<WINDMILL_HOME>/prometheus/targets/<worker id>.json`, for Prometheus' file-based
discovery (deploy/prometheus/prometheus.yml reads `targets/*.json`). The file goes when the worker stops of its own
accord; a worker that was killed leaves it, and Prometheus sees that target down, which is the truth."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from windmill.errors import ConfigError
from windmill.processes import write_atomically

TARGETS = Path("prometheus") / "targets"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.@-]")


def worker_port(base: int, names: Sequence[str], name: str) -> int:
    """The metrics port of the named worker: `base` plus its place among every worker name of the machine (the
    same whichever of them run, so a worker keeps its port)."""
    port = base + list(names).index(name)
    if port > 65535:
        raise ConfigError(f"WINDMILL_METRICS_PORT {base} leaves no port for worker {name!r} ({port} > 65535)")
    return port


def target_path(home: Path, worker_id: str) -> Path:
    return home / TARGETS / f"{_UNSAFE.sub('_', worker_id)}.json"


def target_document(port: int, labels: Mapping[str, str], hostname: str | None = None) -> list[dict[str, object]]:
    """The file_sd document of one worker: its address and labels (worker, role, service)."""
    return [{"targets": [f"{hostname or socket.gethostname()}:{port}"],
             "labels": {key: value for key, value in labels.items() if value}}]


@contextmanager
def advertised(home: Path, worker_id: str, port: int, labels: Mapping[str, str]) -> Iterator[Path]:
    """The worker's target file for as long as the block runs (written whole: Prometheus never reads half a file)."""
    path = target_path(home, worker_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(target_document(port, {"worker": worker_id, **labels}), indent=2) + "\n")
    try:
        yield path
    finally:
        with suppress(FileNotFoundError):
            path.unlink()
