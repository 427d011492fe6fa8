"""The stand-in's CPU per request and per image (issue 19 item 5): `farm serve --no-cache` in its own process, fed a
pipeline's mix of requests by FarmClient threads, its CPU read from /proc.

Run: python -m windmill.bench.stand_in_cpu [--images 24] [--threads 4] [--runs 3] [--baseline-tree DIR] [--by-service]

Per image of distinct synthetic scenes (windmill/bench/scenes.py, served with their sidecars via --annotations):
every primary service with the image uploaded as multipart, each object's crop to colors (a person's also to face
and pose), the BLIP and Ollama captions scored (given the image's file, as the shipped catalog says). Threads take
the requests image by image, as a pipeline's workers do. The farm's CPU from the first request to the last answer,
divided by requests and by images, is the figure.

With `--baseline-tree DIR` (another checkout, e.g. `git worktree add DIR main`), a second farm runs that tree's
code (PYTHONPATH=DIR); the runs alternate sides in one sitting and the summary gives medians and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

from windmill.bench.scenes import write_scenes
from windmill.bench.stand_in import offsets_to_try, running_stand_in
from windmill.catalog import Catalog, load_catalog
from windmill.farm import FarmClient
from windmill.images import crop_for_service
from windmill.images.validate import PreparedImage, prepare_image_and_pixels
from windmill.simfarm.annotations import SIDECAR_SUFFIX
from windmill.simfarm.decoding import MAX_ENTRIES

THREADS = 4
THIS_TREE = Path(__file__).resolve().parents[2]  # the checkout this module runs from
CROP_SERVICES_PERSON = ("colors", "face", "pose")
SCORED_CAPTIONS = ("blip", "ollama")
# Requests per measurement of a kind with --by-service (its requests sent again as often as it takes): /proc counts
# CPU in ticks of 10 ms, and a kind's 100 requests of 0.3 ms would be three ticks. Sent again, an image must have
# left the farm's cache of decodings (its last MAX_ENTRIES, least recently used first): hence more images than that.
BY_SERVICE_REQUESTS = 1_000


@dataclass(frozen=True)
class Call:
    service: str
    image: PreparedImage
    caption: str | None = None  # a /score request when set
    path: str | None = None  # the image's file, for a service the catalog gives it by path (caption_score)
    crop: bool = False  # an object's crop (postprocessing), not the whole image

    @property
    def kind(self) -> str:
        """The service and what it is sent, as `--by-service` groups the requests."""
        return f"{self.service} ({'crop' if self.crop else 'image'})"


def by_kind(calls: list[Call]) -> dict[str, list[Call]]:
    """The requests grouped by `Call.kind`, in the order each kind first comes."""
    groups: dict[str, list[Call]] = {}
    for call in calls:
        groups.setdefault(call.kind, []).append(call)
    return groups


def image_calls(catalog: Catalog, path: Path) -> list[Call]:
    """One image's requests in a pipeline: primary services, crops of its objects, caption scores."""
    image, pixels = prepare_image_and_pixels(path.read_bytes())
    sidecar = json.loads(path.with_name(path.stem + SIDECAR_SUFFIX).read_text())
    calls = [Call(service.name, image) for service in catalog.in_category("primary")]
    for item in sidecar["objects"]:
        crop, _ = crop_for_service(pixels, item["bbox"])
        services = CROP_SERVICES_PERSON if item["label"] == "person" else ("colors",)
        calls += [Call(service, crop, crop=True) for service in services]
    calls += [Call("caption_score", image, sidecar["captions"][name], str(path)) for name in SCORED_CAPTIONS
              if sidecar.get("captions", {}).get(name)]
    return calls


def send_all(client: FarmClient, calls: list[Call], threads: int) -> int:
    """Every call, by `threads` threads in order; the number of answers that were not a success."""
    pending: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
    for call in calls:
        pending.put(call)
    failures: list[str] = []

    def work() -> None:
        while (call := pending.get()) is not None:
            try:
                if call.caption is not None:
                    client.score_answer(call.service, call.image, call.caption, image_path=call.path)
                else:
                    client.analyze(call.service, call.image)
            except Exception as error:  # counted, not fatal: the figure says how many failed
                failures.append(f"{call.service}: {error}")

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        pending.put(None)
        worker.start()
    for worker in workers:
        worker.join()
    for failure in failures[:3]:
        print(f"  failed: {failure}", file=sys.stderr)
    return len(failures)


@dataclass
class Side:
    label: str
    pid: int
    client: FarmClient
    cpu_per_request: list[float]
    system_share: list[float] = field(default_factory=list)  # of the CPU, the kernel's (sockets, thread wake-ups)


def user_and_system_cpu(pid: int) -> tuple[float, float]:
    """CPU-seconds a live process has spent in user space and in the kernel (/proc/<pid>/stat utime, stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def _farm_argv(offset: int, scenes: Path, *, cached: bool) -> list[str]:
    return [sys.executable, "-m", "windmill", "farm", "serve", *([] if cached else ["--no-cache"]), "--port-offset",
            str(offset), "--annotations", str(scenes)]


@dataclass(frozen=True)
class _Farm:
    pid: int
    offset: int


def _start_side(stack: ExitStack, argv: Callable[[int], list[str]], tree: Path, seed: int) -> _Farm:
    """The farm of `tree`'s code: `python -m` puts the working directory first on the path, so the farm runs in the
    tree (and with it on PYTHONPATH, which the tree's own subprocesses inherit)."""
    previous = dict(os.environ)
    os.environ["PYTHONPATH"] = str(tree)
    try:
        process, offset = stack.enter_context(running_stand_in(argv, offsets=offsets_to_try(seed), cwd=tree))
    finally:
        os.environ.clear()
        os.environ.update(previous)
    return _Farm(process.pid, offset)


def _client(catalog: Catalog, offset: int) -> FarmClient:
    shifted = Catalog(tuple(replace(service, port=service.port + offset) for service in catalog.services))
    return FarmClient(shifted, max_connections=THREADS * 2)


def _runs(sides: list[Side], runs: int) -> Iterator[Side]:
    for number in range(runs):
        yield from sides if number % 2 == 0 else reversed(sides)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--runs", type=int, default=3, help="measured runs per side (after one warm-up each)")
    parser.add_argument("--cached-answers", action="store_true",
                        help="serve cached answers (filled by the warm-up): the cost of everything but the answers")
    parser.add_argument("--baseline-tree", type=Path, help="another checkout to compare against, run alternately")
    parser.add_argument("--by-service", action="store_true",
                        help="also each service's requests on their own (whole images and crops apart): CPU per "
                             "request and per image, medians of --runs")
    args = parser.parse_args(argv)
    if args.by_service and args.images <= MAX_ENTRIES:
        parser.error(f"--by-service needs more than {MAX_ENTRIES} images (the farm keeps its last {MAX_ENTRIES} "
                     "decodings: a kind's requests sent again would find theirs)")
    catalog = load_catalog()
    with tempfile.TemporaryDirectory(prefix="windmill-stand-in-cpu-") as folder, ExitStack() as stack:
        scenes = Path(folder)
        paths = write_scenes(scenes, args.images)
        calls = [call for path in paths for call in image_calls(catalog, path)]
        requested = [("this tree", THIS_TREE)]
        if args.baseline_tree is not None:
            requested.append(("baseline", args.baseline_tree.resolve()))
        sides = []
        for seed, (label, tree) in enumerate(requested):
            farm = _start_side(stack, lambda offset: _farm_argv(offset, scenes, cached=args.cached_answers), tree,
                               seed)
            client = stack.enter_context(_client(catalog, farm.offset))
            send_all(client, calls, args.threads)  # warm-up: imports, connections, first decodings' allocations
            sides.append(Side(label, farm.pid, client, []))
            print(f"{label}: farm process {farm.pid}", flush=True)
        print(f"stand-in CPU: {args.images} scenes, {len(calls)} requests ({len(calls) / args.images:.1f} per image), "
              f"{args.threads} client threads, farm serve{'' if args.cached_answers else ' --no-cache'}, zero latency")
        for side in _runs(sides, args.runs):
            (user, system), started = user_and_system_cpu(side.pid), time.perf_counter()
            failed = send_all(side.client, calls, args.threads)
            user_after, system_after = user_and_system_cpu(side.pid)
            wall = time.perf_counter() - started
            cpu = user_after - user + system_after - system
            side.cpu_per_request.append(cpu / len(calls))
            side.system_share.append((system_after - system) / cpu if cpu else 0.0)
            print(f"  {side.label:<10} {1000 * cpu / len(calls):6.2f} ms CPU per request "
                  f"({100 * side.system_share[-1]:.0f} % kernel), {1000 * cpu / args.images:6.1f} ms per image, "
                  f"{len(calls) / wall:6.0f} requests/s{f', {failed} failed' if failed else ''}")
        per_image = len(calls) / args.images
        for side in sides:
            median = statistics.median(side.cpu_per_request)
            print(f"{side.label:<10} median {1000 * median:.2f} ms CPU per request, {1000 * median * per_image:.1f} "
                  f"ms per image, {100 * statistics.median(side.system_share):.0f} % of it in the kernel")
        if len(sides) == 2:
            ratio = statistics.median(sides[0].cpu_per_request) / statistics.median(sides[1].cpu_per_request)
            print(f"this tree / baseline: {ratio:.2f} × the CPU per request")
        if args.by_service:
            _print_by_service(sides, calls, args.images, args.threads, args.runs)


def _cpu_per_request(side: Side, calls: list[Call], threads: int) -> float:
    repeated = calls * -(-BY_SERVICE_REQUESTS // len(calls))
    user, system = user_and_system_cpu(side.pid)
    send_all(side.client, repeated, threads)
    user_after, system_after = user_and_system_cpu(side.pid)
    return (user_after - user + system_after - system) / len(repeated)


def _print_by_service(sides: list[Side], calls: list[Call], images: int, threads: int, runs: int) -> None:
    """Each kind of request sent on its own, `runs` times a side: where the stand-in's CPU goes."""
    print(f"by service ({threads} client threads, each kind's requests alone, at least {BY_SERVICE_REQUESTS:,} a "
          f"measurement; median of {runs}):")
    for kind, group in by_kind(calls).items():
        cells = []
        for side in sides:  # a side's runs one after the other: a kind's cost, not a ratio, is this table's figure
            median = statistics.median(_cpu_per_request(side, group, threads) for _ in range(runs))
            cells.append(f"{side.label} {1000 * median:5.2f} ms per request, {1000 * median * len(group) / images:5.2f}"
                         f" per image")
        print(f"  {kind:<24} {len(group) / images:4.2f} per image   " + "   ".join(cells))


if __name__ == "__main__":
    main()
