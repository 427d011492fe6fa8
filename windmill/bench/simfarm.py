"""Stand-in throughput (target ≥ 1,500 requests/s for cached images at zero latency, on 2 cores).

Run: python -m windmill.bench.simfarm [--seconds 5] [--clients 2] [--threads 4] [--no-cache]
Every catalog service is served; client processes (lean keep-alive http.client, so the farm and not
the client is measured) POST the bundled samples as multipart uploads, as Windmill does, round-robin
over services and images, after one warm-up pass has filled the answer cache. With --no-cache the farm
computes every answer per request (`farm serve --no-cache`, what the pipeline benchmarks use) and there
is no warm-up.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from windmill.catalog import load_catalog
from windmill.errors import WindmillError
from windmill.simfarm import SimFarm
from windmill.simfarm.server import SAMPLES_DIR

BOUNDARY = "windmill-bench-boundary"
Request = tuple[int, str, bytes]  # port, path, multipart body


def _multipart(image: bytes, filename: str, fields: dict[str, str]) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode() + image + b"\r\n"
    )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def build_requests(farm: SimFarm, images: Sequence[Path]) -> list[Request]:
    requests = []
    for name, service in farm.services.items():
        fields = {"caption": "a photo"} if farm.profiles[name].scores else {}
        for image in images:
            requests.append((farm.ports[name], service.endpoint, _multipart(image.read_bytes(), image.name, fields)))
    return requests


def _client_thread(host: str, requests: list[Request], seconds: float, results: list[tuple[int, int, float]]) -> None:
    connections: dict[int, http.client.HTTPConnection] = {}
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    ok = failed = 0
    start = time.perf_counter()
    deadline = start + seconds
    index = 0
    while time.perf_counter() < deadline:
        port, path, body = requests[index % len(requests)]
        index += 1
        connection = connections.get(port)
        if connection is None:
            connection = connections[port] = http.client.HTTPConnection(host, port, timeout=30)
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        if response.status == 200:
            ok += 1
        else:
            failed += 1
    for connection in connections.values():
        connection.close()
    results.append((ok, failed, time.perf_counter() - start))


def _client_process(host: str, requests: list[Request], threads: int, seconds: float, seed: int,
                    queue: multiprocessing.Queue) -> None:
    results: list[tuple[int, int, float]] = []
    workers = []
    for number in range(threads):
        shuffled = list(requests)
        random.Random(seed * 1000 + number).shuffle(shuffled)
        workers.append(threading.Thread(target=_client_thread, args=(host, shuffled, seconds, results)))
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    queue.put(results)


def _start_farm(catalog_offsets: Sequence[int], *, cache: bool = True) -> SimFarm:
    catalog = load_catalog()
    for offset in catalog_offsets:
        farm = SimFarm(catalog, port_offset=offset, cache=cache)
        try:
            farm.start()
            return farm
        except WindmillError:
            continue
    raise WindmillError("no free block of ports found for the stand-in")


def run(seconds: float, clients: int, threads: int, *, cache: bool = True) -> tuple[int, int, float]:
    """(successful requests, failed requests, wall seconds) of one measured run."""
    farm = _start_farm([random.randrange(20000, 40000) for _ in range(10)], cache=cache)
    try:
        images = sorted(SAMPLES_DIR.glob("*.jpg"))
        requests = build_requests(farm, images)
        for port, path, body in requests if cache else ():  # one pass fills the cache
            connection = http.client.HTTPConnection(farm.host, port, timeout=30)
            connection.request("POST", path, body=body,
                               headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
            connection.getresponse().read()
            connection.close()
        context = multiprocessing.get_context("spawn")  # no fork of a process with server threads
        queue = context.Queue()
        processes = [context.Process(target=_client_process, args=(farm.host, requests, threads, seconds, n, queue))
                     for n in range(clients)]
        started = time.perf_counter()
        for process in processes:
            process.start()
        results = [entry for _ in processes for entry in queue.get(timeout=seconds + 120)]
        for process in processes:
            process.join()
        wall = max(elapsed for _, _, elapsed in results) if results else time.perf_counter() - started
        return sum(ok for ok, _, _ in results), sum(bad for _, bad, _ in results), wall
    finally:
        farm.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--threads", type=int, default=4, help="keep-alive client threads per process")
    parser.add_argument("--no-cache", action="store_true", help="compute every answer per request")
    args = parser.parse_args(argv)
    ok, failed, wall = run(args.seconds, args.clients, args.threads, cache=not args.no_cache)
    answers = "answers computed per request" if args.no_cache else "cached answers"
    print(f"simfarm: {ok} requests in {wall:.2f} s ({failed} failed): {ok / wall:,.0f} requests/s "
          f"[{args.clients} client processes × {args.threads} threads, {answers}, zero latency]")


if __name__ == "__main__":
    main()
