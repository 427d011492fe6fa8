"""A contract-faithful stand-in for the Animal Farm ML services: tests, demos and load runs without GPUs.

`SimFarm` serves every selected catalog service on its own port (catalog port + offset) from one
process, with the envelopes, field names, bbox forms, error bodies and quirks of
spec/animal-farm-api.md. Answers are deterministic per image (SHA-256 of the bytes): colours and
metadata are computed from the pixels; detections, captions, labels and text come from annotation
sidecars (`photo.jpg` + `photo.boxes.json`, see windmill/samples/README.md), perturbed per detector.
Faults (latency, 500s, held requests, malformed bodies) are drawn per request from a seed.

Server choice: the stdlib `ThreadingHTTPServer` (one thread per keep-alive connection) with
python-multipart for uploads. Measured on 2 cores (windmill/bench/simfarm.py, clients on the same
machine) it answers 2,400–2,650 cached uploads/s across all ports, well above the 1,500/s target.
A bare aiohttp prototype reached ~3,000–3,800/s where a bare stdlib one reached ~2,700/s: not worth
seven more dependencies and a second concurrency model, and with threads a held "timeout" request
costs only a sleeping thread. Two details matter: TCP_NODELAY and one write per answer (headers and
body in separate writes meet delayed ACKs: ~180 requests/s). Request heads are read without the `email`
package (request_head), and one upload's decodings are shared by the services it reaches (decoding).

    from windmill.catalog import load_catalog
    from windmill.simfarm import SimFarm

    with SimFarm(load_catalog(), port_offset=1000, error_rate=0.05, seed=7) as farm:
        url = farm.base_url("yolov8") + "/v3/analyze"     # POST multipart field "file"

SimFarm and serve_command are imported on first use: the annotation and lexicon modules (used by
windmill.samples.coco) need none of the server's optional dependencies (`windmill-pipeline[simfarm]`).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from windmill.simfarm.command import serve_command
    from windmill.simfarm.server import SimFarm

__all__ = ["SimFarm", "serve_command"]
_HOMES = {"SimFarm": "windmill.simfarm.server", "serve_command": "windmill.simfarm.command"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'windmill.simfarm' has no attribute {name!r}")
