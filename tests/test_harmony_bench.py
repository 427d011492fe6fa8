"""The harmony benchmark runs small and prints its speed and quality figures (never a timed assertion: the numbers
go to the README), and its scenes hold the disagreements it claims."""

from __future__ import annotations

import numpy as np
import pytest

from windmill.bench import harmony
from windmill.bench.harmony_scenes import CLASS_NAMES, LOOK_ALIKES, synthetic_scene


def test_harmony_benchmark_prints_speed_and_quality(capsys: pytest.CaptureFixture[str]) -> None:
    assert harmony.main(["--images", "2", "--scenes", "12", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    quality = out[out.index("quality on the 12 scenes"):].splitlines()[2:]
    methods = [line[:34].strip() for line in quality]
    assert methods[:4] == ["harmony", "harmony + rejected", "harmony by avg_confidence",
                           "reference (union, avg_confidence)"]
    assert {"clip", "detectron2", "rtdetr", "xception", "yolov8"} <= set(methods)
    ap50 = {method: float(line.split()[-7]) for method, line in zip(methods, quality, strict=True)}
    # The rejects only add candidates below the stored boxes' recall: AP50 can only grow.
    assert ap50["harmony + rejected"] >= ap50["harmony"] > 0


def test_scenes_hold_the_disagreements_of_real_detectors() -> None:
    rng = np.random.default_rng(3)
    scenes = [synthetic_scene(rng, i) for i in range(200)]
    assert {len(scene.truth) for scene in scenes} == {2, 3, 4, 5, 6}
    confused = missed = doubled = 0
    for scene in scenes:
        truth_labels = {CLASS_NAMES[kind] for kind, _ in scene.truth}
        for result in scene.results:
            labels = [p["label"] for p in result.data["predictions"]]  # type: ignore[index]
            missed += len(labels) < len(scene.truth)
            confused += any(label not in truth_labels and LOOK_ALIKES.get(label) in truth_labels for label in labels)
            doubled += any(labels.count(label) > [CLASS_NAMES[k] for k, _ in scene.truth].count(label)
                           for label in set(labels))
    assert missed and confused and doubled
