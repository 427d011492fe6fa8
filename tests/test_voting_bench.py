"""The voting benchmark runs and prints its figures (never a timed assertion: the numbers go to the README)."""

from __future__ import annotations

import pytest

from windmill.bench import voting
from windmill.voting import compute_consensus


def test_voting_benchmark_prints_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert voting.main(["--images", "3", "--runs", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("voting: 14 services, 10 merged boxes,")
    assert [line.split(":")[0] for line in lines[1:3]] == ["run 1", "run 2"]
    assert "ms budget" in lines[-1]


def test_benchmark_image_exercises_every_part_of_the_vote() -> None:
    results, boxes, post = voting.image_rows()
    data = compute_consensus(results, boxes, post, service_types=voting.SERVICE_TYPES)
    person = next(item for item in data["votes"]["consensus"] if item["emoji"] == "🧑")
    assert person["validation"] == ["face_confirmed", "pose_confirmed"]
    assert data["debug"]["superseded_result_ids"] == [99]
    assert data["special"]["text"]["detected"] and data["special"]["face"]["detected"]
