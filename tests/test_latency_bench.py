"""The latency-profile pipeline benchmark's arithmetic and set-up (windmill.bench.latency_profile): the bound a
profile implies, latency scaling, the operator's catalog and layout, and options refused in one sentence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from windmill.bench.latency_profile import (
    FEED_OVER_BOUND,
    LatencyBench,
    feed_rate,
    latency_setup,
    operator_catalog,
    operator_layout,
    profile_document,
    service_bounds,
)
from windmill.catalog import Catalog, bundled_catalog_path, load_catalog
from windmill.errors import WindmillError


def test_the_bound_is_capacity_over_calls_times_latency_and_scaling_moves_it() -> None:
    _, gpu = profile_document("gpu", {})
    bounds = service_bounds(gpu, {"ollama": 1, "yolov8": 1, "pose": 0.5, "colors": 0})
    assert bounds == pytest.approx({"ollama": 1 / 1.5, "yolov8": 4 / 0.020, "pose": 1 / (0.5 * 0.025)})
    _, slower = profile_document("gpu", {"ollama": 10})
    assert service_bounds(slower, {"ollama": 1})["ollama"] == pytest.approx(1 / 15)
    assert service_bounds(slower, {"ollama": 1}, {"ollama": 12.0})["ollama"] == pytest.approx(1 / 12)


def test_the_default_feed_is_a_quarter_over_the_unscaled_primary_bound(catalog: Catalog) -> None:
    assert feed_rate(LatencyBench("gpu", {"ollama": 10}), catalog) == pytest.approx(FEED_OVER_BOUND / 1.5)
    assert feed_rate(LatencyBench("gpu", {}, rate=3.0), catalog) == 3.0


def test_the_operator_sets_each_limit_to_the_capacity_and_sizes_each_worker_by_its_lanes(tmp_path: Path) -> None:
    path = tmp_path / "service_config.json"
    path.write_text(bundled_catalog_path().read_text())
    _, gpu = profile_document("gpu", {})
    operator_catalog(path, gpu)
    laid_out = load_catalog(path)
    assert laid_out["ollama"].max_concurrency == 1 and laid_out["yolov8"].max_concurrency == 4
    assert laid_out["pose"].max_concurrency == 1
    layout = {spec.role: spec for spec in operator_layout(laid_out)}
    primary = sum(gpu.timing(service.name).capacity for service in laid_out.in_category("primary"))
    assert layout["service"].concurrency == primary
    assert layout["postprocess"].concurrency == 4 + 1 + 1  # colors, face, pose
    assert layout["caption_score"].concurrency == 4 and layout["merger"].concurrency == 2
    assert json.loads(path.read_text())["services"]["blip"]["max_concurrency"] == 2
    roomy = tmp_path / "roomy.json"
    roomy.write_text(json.dumps({"services": {"pose": {"mean_ms": 25, "capacity": 4}}}))
    operator_catalog(path, profile_document(str(roomy), {})[1])
    assert load_catalog(path)["pose"].max_concurrency == 1, "a smaller limit of the catalog stays"


@pytest.mark.parametrize(("profile", "scales", "rate", "says"), [
    ("gpu", ["ollama"], None, "expected SERVICE=FACTOR"),
    ("gpu", ["ollama=0"], None, "positive number"),
    ("gpu", ["teapot=2"], None, "has no such service"),
    ("no-such-profile", [], None, "cannot read latency profile"),
    (None, ["ollama=10"], None, "need --latency-profile"),
])
def test_bad_options_are_refused_in_one_sentence(profile: str | None, scales: list[str], rate: float | None,
                                                 says: str) -> None:
    with pytest.raises(WindmillError, match=says):
        latency_setup(profile, scales, rate)
    assert latency_setup(None, [], None) is None
