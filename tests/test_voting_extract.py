"""Vote extraction from each service's contract-shaped answer (animal-farm-api.md §3), and which rows count.

Expected votes are written by hand from the rules of reference-behaviour.md §8.2: one vote per service per emoji,
caption word mappings before a prediction's own emoji, full_image labels as classification votes.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from windmill.voting import (
    MergedBox,
    MergedBoxRow,
    ServiceResult,
    VotingConfig,
    latest_success_rows,
    service_votes,
    spatial_votes,
)

ANSWERS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "answers" / "contract_examples.json").read_text(encoding="utf-8")
)
FIXED = VotingConfig()
REFERENCE = VotingConfig.reference()
CAPTION = {"source": "caption_mapping"}


def caption(word: str) -> dict[str, Any]:
    return {"word": word, **CAPTION}


def full_image(label: str) -> dict[str, Any]:
    return {"source": "full_image_classification", "label": label}


# (service, evidence type from the catalog, config, expected votes: (emoji, voter, evidence type, confidence, context))
CASES = [
    pytest.param(
        "blip",
        "semantic",
        FIXED,
        [  # "couch" maps to 🪑 again: the service already voted 🪑 through "sitting"
            ("🧑", "blip", "semantic", 0.75, caption("man")),
            ("🪑", "blip", "semantic", 0.75, caption("sitting")),
            ("🐶", "blip", "semantic", 0.75, caption("dog")),
        ],
        id="blip",
    ),
    pytest.param(
        "ollama",
        "semantic",
        FIXED,
        [
            ("🧑", "llama", "semantic", 0.75, caption("man")),
            ("🧥", "llama", "semantic", 0.75, caption("sweatshirt")),
            ("🪑", "llama", "semantic", 0.75, caption("couch")),
            ("🐶", "llama", "semantic", 0.75, caption("golden_retriever")),
        ],
        id="ollama-votes-as-llama",
    ),
    pytest.param(
        "clip",
        "spatial",
        FIXED,
        [  # full_image: "living_room_scene" has no emoji; 🪑 and 🐶 keep their classification evidence
            ("🐶", "clip", "spatial", 0.611, {}),
            ("🧑", "clip", "spatial", 0.402, {}),
            ("🪑", "clip", "spatial", 0.355, {}),
            ("🪑", "clip", "classification", 0.173, full_image("studio_couch")),
            ("🐶", "clip", "classification", 0.121, full_image("golden_retriever")),
        ],
        id="clip-full-image-beside-boxes",
    ),
    pytest.param(
        "clip",
        "spatial",
        REFERENCE,
        [  # reference: a full_image emoji the service already boxed is lost
            ("🐶", "clip", "spatial", 0.611, {}),
            ("🧑", "clip", "spatial", 0.402, {}),
            ("🪑", "clip", "spatial", 0.355, {}),
        ],
        id="clip-reference-loses-full-image",
    ),
    pytest.param(
        "xception",
        "spatial",
        FIXED,
        [
            ("🐶", "xception", "spatial", 0.874, {}),
            ("🪑", "xception", "spatial", 0.512, {}),
            ("🧥", "xception", "spatial", 0.331, {}),
            ("🪑", "xception", "classification", 0.412, full_image("studio_couch")),
        ],
        id="xception",
    ),
    pytest.param(
        "yolov8",
        "spatial",
        FIXED,
        [
            ("🧑", "yolo", "spatial", 0.912, {}),
            ("🐶", "yolo", "spatial", 0.874, {}),
            ("🪑", "yolo", "spatial", 0.641, {}),
        ],
        id="yolov8-votes-as-yolo",
    ),
    pytest.param(
        "rtdetr",
        "spatial",
        FIXED,
        [
            ("🧑", "rtdetr", "spatial", 0.951, {}),
            ("🐶", "rtdetr", "spatial", 0.902, {}),
            ("🪑", "rtdetr", "spatial", 0.733, {}),
        ],
        id="rtdetr",
    ),
    pytest.param(
        "detectron2",
        "spatial",
        FIXED,
        [
            ("🧑", "detectron2", "spatial", 0.998, {}),
            ("🐶", "detectron2", "spatial", 0.991, {}),
            ("🪑", "detectron2", "spatial", 0.873, {}),
        ],
        id="detectron2",
    ),
    pytest.param(
        "face", "specialized", FIXED, [("🙂", "face", "specialized", 0.912, {"pose": None})], id="face-as-a-result"
    ),
    pytest.param("pose", "specialized", FIXED, [], id="pose-has-no-emoji"),
    pytest.param("colors", "other", FIXED, [], id="colors-has-no-emoji"),
    pytest.param(
        "ocr",
        "specialized",
        FIXED,
        [  # the word mappings win: OCR's own 💬 is ignored
            ("🥗", "ocr", "specialized", 0.75, caption("fresh")),
            ("🍞", "ocr", "specialized", 0.75, caption("bread")),
            ("🔥", "ocr", "specialized", 0.75, caption("hot")),
            ("🍕", "ocr", "specialized", 0.75, caption("pizza")),
        ],
        id="ocr-word-mappings",
    ),
    pytest.param("nsfw2", "specialized", FIXED, [], id="nsfw2-safe-votes-nothing"),
    pytest.param("metadata", "other", FIXED, [], id="metadata"),
    pytest.param("caption_score", "other", FIXED, [], id="caption-score-has-no-predictions"),
]


@pytest.mark.parametrize(("service", "kind", "config", "expected"), CASES)
def test_votes_extracted_from_a_contract_answer(service: str, kind: str, config: VotingConfig, expected: list) -> None:
    votes = service_votes(service, ANSWERS[service], kind, config)
    assert [(v.emoji, v.service, v.evidence_type, v.confidence, dict(v.context)) for v in votes] == expected
    assert not any(vote.shiny for vote in votes)


VARIANTS = [
    pytest.param(
        "ocr",
        {"predictions": [{"text": "EXIT", "has_text": True, "emoji": "💬", "text_regions": [], "emoji_mappings": []}]},
        [("💬", "ocr", "specialized", 0.75, {"text_detected": True, "text_content": "EXIT"})],
        id="ocr-text-without-word-mappings-votes-speech-balloon",
    ),
    pytest.param(
        "ocr",
        {"predictions": [{"text": "", "has_text": False, "emoji": "", "text_regions": [], "emoji_mappings": []}]},
        [],
        id="ocr-no-text",
    ),
    pytest.param(
        "nsfw2",
        {"predictions": [{"confidence": 0.912, "emoji": "🔞", "nsfw": True}]},
        [("🔞", "nsfw", "specialized", 0.912, {"nsfw_confidence": 0.912})],
        id="nsfw2-flagged",
    ),
    pytest.param(
        "yolov8",
        {"predictions": [{"label": "person", "confidence": 0.9, "emoji": "🧑"}, {"label": "person", "emoji": "👩"}]},
        [("🧑", "yolo", "spatial", 0.9, {})],
        id="one-vote-per-normalised-emoji",
    ),
    pytest.param(
        "yolov8",
        {
            "predictions": [
                {"label": "dining table", "confidence": 0.7},
                {"label": "cup", "emoji": "", "confidence": 0.6},
            ]
        },
        [],
        id="missing-and-empty-emoji-do-not-vote",
    ),
    pytest.param(
        "colors",
        {"predictions": [{"type": "color_analysis", "emoji": "🎨"}]},
        [],
        id="color-analysis-never-votes",
    ),
    pytest.param(
        "rtdetr",
        {"predictions": ['{"label": "dog", "confidence": 0.8, "emoji": "🐶"}', "not json", 7]},
        [("🐶", "rtdetr", "spatial", 0.8, {})],
        id="json-text-predictions-parsed-junk-skipped",
    ),
]


@pytest.mark.parametrize(("service", "answer", "expected"), VARIANTS)
def test_votes_extracted_from_answer_variants(service: str, answer: dict, expected: list) -> None:
    kind = {"ocr": "specialized", "nsfw2": "specialized", "colors": "other"}.get(service, "spatial")
    votes = service_votes(service, answer, kind, FIXED)
    assert [(v.emoji, v.service, v.evidence_type, v.confidence, dict(v.context)) for v in votes] == expected


def test_full_image_of_a_service_without_predictions_still_votes() -> None:
    answer = {"predictions": [], "full_image": [{"label": "dog", "emoji": "🐕", "confidence": 0.64}]}
    fixed = service_votes("clip", answer, "spatial", FIXED)
    assert [(v.emoji, v.evidence_type) for v in fixed] == [("🐕", "classification")]
    # The reference skipped the whole service when its predictions list was empty.
    assert service_votes("clip", answer, "spatial", REFERENCE) == []


def test_shiny_comes_from_the_mapping_or_the_prediction_that_votes() -> None:
    ollama = {"predictions": [{"text": "a dog", "emoji_mappings": [{"word": "dog", "emoji": "🐶", "shiny": True}]}]}
    yolo = {"predictions": [{"label": "dog", "confidence": 0.8, "emoji": "🐶", "shiny": True}]}
    # BLIP rolls shiny per caption, on the prediction; the votes come from its mappings (as upstream).
    blip = {"predictions": [{"text": "a dog", "shiny": True, "emoji_mappings": [{"word": "dog", "emoji": "🐶"}]}]}
    assert [v.shiny for v in service_votes("ollama", ollama, "semantic", FIXED)] == [True]
    assert [v.shiny for v in service_votes("yolov8", yolo, "spatial", FIXED)] == [True]
    assert [v.shiny for v in service_votes("blip", blip, "semantic", FIXED)] == [False]


def test_emoji_normalised_by_default_raw_in_reference_mode() -> None:
    answer = {"predictions": [{"text": "a park", "emoji_mappings": [{"word": "park", "emoji": "🏞️"}]}]}
    assert [v.emoji for v in service_votes("blip", answer, "semantic", FIXED)] == ["🏞"]
    assert [v.emoji for v in service_votes("blip", answer, "semantic", REFERENCE)] == ["🏞️"]


def box_row(merged_id: int, emoji: str, count: int, confidence: float) -> MergedBoxRow:
    return MergedBoxRow(
        merged_id,
        {"cluster_id": f"{emoji}_1", "emoji": emoji, "detection_count": count, "avg_confidence": confidence},
    )


def test_merged_boxes_vote_only_when_two_services_agree() -> None:
    rows = [box_row(1, "🧑", 3, 0.953), box_row(2, "🥏", 1, 0.9), box_row(3, "🐕", 2, 0.75)]
    boxes = [MergedBox.from_row(row, FIXED.emoji_key) for row in rows]
    votes = spatial_votes(boxes, FIXED)
    assert [(v.emoji, v.service, v.evidence_type, v.confidence) for v in votes] == [
        ("🧑", "merged_boxes", "spatial", 0.953),
        ("🐕", "merged_boxes", "spatial", 0.75),
    ]
    assert [v.box.merged_id for v in votes if v.box] == [1, 3]


T0 = datetime(2025, 9, 3, 12, 0, 0)


def row(result_id: int, service: str, status: str = "success", minutes: int = 0) -> ServiceResult:
    return ServiceResult(result_id, service, status, {"predictions": []}, None, T0 + timedelta(minutes=minutes))


@pytest.mark.parametrize(
    ("rows", "used", "superseded"),
    [
        pytest.param([row(1, "blip"), row(2, "blip", minutes=1)], [2], [1], id="later-created-wins"),
        pytest.param([row(9, "blip", minutes=1), row(2, "blip")], [9], [2], id="input-order-does-not-matter"),
        pytest.param([row(3, "blip"), row(4, "blip")], [4], [3], id="same-instant-higher-result-id-wins"),
        pytest.param([row(1, "blip"), row(2, "blip", "error", minutes=1)], [1], [], id="newer-error-keeps-success"),
        pytest.param([row(1, "blip", "timeout"), row(2, "ocr", "pending")], [], [], id="no-success-no-row"),
        pytest.param([row(5, "yolov8"), row(6, "blip"), row(7, "ocr")], [6, 7, 5], [], id="sorted-by-service"),
    ],
)
def test_latest_success_row_per_service(rows: list[ServiceResult], used: list[int], superseded: list[int]) -> None:
    chosen, dropped = latest_success_rows(rows)
    assert [r.result_id for r in chosen] == used
    assert dropped == superseded
