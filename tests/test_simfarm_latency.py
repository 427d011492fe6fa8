"""The stand-in's latency profiles and capacity (`farm serve --latency-profile`), and answers computed per request
(`--no-cache`): a service holds at most its capacity in service, the rest wait in line; bad profiles are refused
with one sentence naming the field."""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from tests.conftest import REPOSITORY, wait_until
from tests.test_simfarm import COFFEE, start_farm, upload
from windmill.catalog import Catalog
from windmill.errors import WindmillError
from windmill.simfarm.capacity import ServiceLoad
from windmill.simfarm.contract import PROFILES
from windmill.simfarm.latency import LatencyProfile, ProfileError, ServiceTiming, load_profile, parse_profile


def profile(services: dict[str, Any], **top: Any) -> LatencyProfile:
    return parse_profile({"services": services, **top}, name="test", source="test.json", known_services=PROFILES)


def test_requests_beyond_the_capacity_wait_in_line_until_a_place_frees(catalog: Catalog) -> None:
    # Capacity 2, and service times far longer than the test: the third request can only wait.
    farm = start_farm(catalog, services=["yolov8"],
                      latency_profile=profile({"yolov8": {"mean_ms": 60_000, "capacity": 2}}))
    outcomes: list[str] = []

    def call() -> None:
        try:
            with httpx.Client(timeout=120) as client:
                outcomes.append(str(upload(client, farm, "yolov8", COFFEE.read_bytes()).status_code))
        except httpx.HTTPError as error:
            outcomes.append(type(error).__name__)

    callers = [threading.Thread(target=call) for _ in range(3)]
    try:
        for caller in callers:
            caller.start()
        wait_until(lambda: farm.load_stats()["yolov8"].held == 3, message="the stand-in to hold all three requests")
        now = farm.load_stats()["yolov8"]
        assert (now.in_service, now.waited) == (2, 1), now
    finally:
        farm.stop()  # releases the two in service and the one in line: they are hung up on
    for caller in callers:
        caller.join(timeout=30)
    assert len(outcomes) == 3 and "200" not in outcomes, outcomes
    assert farm.load_stats()["yolov8"].peak_in_service == 2


def test_a_capacity_of_one_serves_one_request_at_a_time(catalog: Catalog) -> None:
    farm = start_farm(catalog, services=["pose"], latency_profile=profile({"pose": {"mean_ms": 20, "capacity": 1}}))
    try:
        with httpx.Client(timeout=30) as client:
            def call(_: int) -> int:
                return upload(client, farm, "pose", COFFEE.read_bytes()).status_code

            with ThreadPoolExecutor(6) as pool:
                statuses = list(pool.map(call, range(12)))
    finally:
        farm.stop()
    stats = farm.load_stats()["pose"]
    assert statuses == [200] * 12
    assert stats.peak_in_service == 1 and stats.requests == 12
    assert stats.peak_held > 1, "the clients did overlap: the line, not the clients, kept it to one"


def test_a_request_answered_no_longer_counts_as_held_while_its_answer_is_written() -> None:
    """A client honouring a limit of one sends its next request as soon as it has read an answer; the server's
    thread may not have left the request yet. That next request does not overlap the answered one."""
    load = ServiceLoad("pose", None)
    with load.holding() as answered:
        answered()  # what the server does just before writing the answer's bytes
        with load.holding():
            pass
    with load.holding(), load.holding():  # two requests neither of them answered do overlap
        pass
    stats = load.stats()
    assert stats.peak_held == 2 and stats.held == 0 and stats.requests == 4


def test_service_times_follow_the_profile_mean() -> None:
    timing = ServiceTiming(mean_ms=150, jitter=0.3)
    draws = [timing.seconds((n + 0.5) / 20_000) for n in range(20_000)]  # the distribution's quantiles
    assert sum(draws) / len(draws) == pytest.approx(0.150, rel=0.01)
    assert min(draws) < 0.150 / 2 and max(draws) > 0.150 * 2, "jitter spreads the times both ways"
    assert ServiceTiming(mean_ms=20).seconds(0.99) == 0.020, "no jitter: always the mean"


def test_a_fixed_latency_and_a_profile_are_not_combined(catalog: Catalog) -> None:
    with pytest.raises(WindmillError, match="exclude each other"):
        start_farm(catalog, latency_ms=50, latency_profile=profile({}))


def test_the_bundled_gpu_profile_is_documented_in_the_readme() -> None:
    gpu = load_profile("gpu", PROFILES)
    assert set(gpu.services) == set(PROFILES), "the gpu profile times every simulated service"
    readme = (REPOSITORY / "README.md").read_text()
    for service, timing in gpu.services.items():
        row = f"| `{service}` | {timing.mean_ms:g} ms | {timing.jitter:g} | {timing.capacity} |"
        assert row in readme, f"README lacks the gpu profile row {row}"


BAD_PROFILES = [
    ([1, 2], "must be a JSON object"),
    ({"servces": {}}, "unknown field 'servces'; expected description, default, services"),
    ({"services": []}, '"services" must be an object'),
    ({"services": {"yolo9": {"mean_ms": 5}}}, "unknown service 'yolo9'; the stand-in simulates blip"),
    ({"services": {"ocr": 100}}, "service 'ocr' must be an object"),
    ({"services": {"ocr": {"mean": 100}}}, "service 'ocr' has unknown field 'mean'; expected mean_ms"),
    ({"services": {"ocr": {"jitter": 0.1}}}, "service 'ocr' lacks mean_ms"),
    ({"services": {"ocr": {"mean_ms": "fast"}}}, "mean_ms must be a number, got 'fast'"),
    ({"services": {"ocr": {"mean_ms": -5}}}, "mean_ms must not be negative"),
    ({"services": {"ocr": {"mean_ms": 5, "jitter": 7}}}, "jitter must lie between 0 and 2"),
    ({"services": {"ocr": {"mean_ms": 5, "capacity": 0}}}, "capacity must be a whole number of at least 1"),
    ({"services": {"ocr": {"mean_ms": 5, "capacity": 1.5}}}, "capacity must be a whole number"),
    ({"services": {"ocr": {"mean_ms": 5, "capacity": True}}}, "capacity must be a whole number"),
    ({"default": {"mean_ms": 5, "capacity": -1}}, "default: capacity must be a whole number"),
]


@pytest.mark.parametrize(("document", "message"), BAD_PROFILES)
def test_bad_profiles_are_refused_naming_the_field(tmp_path: Path, document: Any, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ProfileError) as refused:
        load_profile(str(path), PROFILES)
    assert message in str(refused.value) and str(path) in str(refused.value)


def test_unreadable_profiles_are_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"services": {"ocr": {"mean_ms": 5,}}}')
    with pytest.raises(ProfileError, match=re.escape(f"latency profile {broken} is not valid JSON")):
        load_profile(str(broken), PROFILES)
    with pytest.raises(ProfileError, match=r"'gpux' is neither a bundled profile \(gpu\) nor a file"):
        load_profile("gpux", PROFILES)


def test_farm_serve_refuses_a_bad_profile_in_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "slow.json").write_text(json.dumps({"services": {"pose": {"mean_ms": 25, "capacity": 0}}}))
    result = CliRunner().invoke(main, ["farm", "serve", "--latency-profile", "slow.json"])
    assert result.exit_code == 1
    assert result.output.strip() == ("Error: latency profile slow.json, service 'pose': capacity must be a whole "
                                     "number of at least 1 (requests served at once), got 0")


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "no-cache"])
def test_no_cache_computes_every_answer_and_answers_the_same(catalog: Catalog, cache: bool) -> None:
    farm = start_farm(catalog, services=["yolov8", "colors"], cache=cache)
    try:
        with httpx.Client(timeout=30) as client:
            bodies = [upload(client, farm, service, COFFEE.read_bytes()).content
                      for service in ("yolov8", "colors") for _ in range(3)]
    finally:
        farm.stop()
    assert bodies[0] == bodies[1] == bodies[2] and bodies[3] == bodies[4] == bodies[5]
    assert farm.answerer.computed == (2 if cache else 6)


def test_the_line_is_first_come_first_served() -> None:
    load = ServiceLoad("pose", ServiceTiming(mean_ms=0, capacity=1))
    stopping = threading.Event()
    served: list[str] = []

    def wait_then_serve(name: str) -> None:
        with load.place(stopping) as placed:
            assert placed
            served.append(name)

    with load.place(stopping):  # the one place is taken: everyone else queues, in the order they came
        waiting = []
        for position, name in enumerate("abcde", start=1):
            waiting.append(threading.Thread(target=wait_then_serve, args=(name,)))
            waiting[-1].start()
            wait_until(lambda position=position: load.stats().in_line == position, message=f"{name} in line")
    for thread in waiting:
        thread.join(timeout=10)
    assert served == list("abcde")
    assert load.stats().waited == 5 and load.stats().peak_in_service == 1


def test_stopping_releases_the_line() -> None:
    load = ServiceLoad("ollama", ServiceTiming(mean_ms=0, capacity=1))
    stopping = threading.Event()
    outcome: list[bool] = []

    def wait() -> None:
        with load.place(stopping) as placed:
            outcome.append(placed)

    with load.place(stopping):
        waiter = threading.Thread(target=wait)
        waiter.start()
        wait_until(lambda: load.stats().in_line == 1, message="the waiter in line")
        stopping.set()
        waiter.join(timeout=10)
    assert outcome == [False] and load.stats().in_line == 0
