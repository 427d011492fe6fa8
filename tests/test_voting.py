"""The V3 consensus of one image: the reference's worked examples as tables, curation, special detections, and
each reference bug we fix (with the reference behaviour beside it, from VotingConfig.reference()).

Expected numbers come from the spec (reference-behaviour.md §8.9, animal-farm-api.md §5.3) or from the hand
computation written next to them: weight = votes + spatial bonus + content bonus + classification bonus,
final = votes + weight.
"""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from windmill.box_names import box_label
from windmill.catalog import load_catalog
from windmill.emoji import normalize_emoji
from windmill.voting import (
    MergedBoxRow,
    PostprocessingRow,
    ServiceResult,
    VotingConfig,
    compute_consensus,
)

# service_type of every catalog service (reference-behaviour.md §2.1); the caller builds this from the catalog.
SERVICE_TYPES = {service.name: service.service_type for service in load_catalog().services}
FIXED = VotingConfig()
REFERENCE = VotingConfig.reference()
T0 = datetime(2025, 9, 3, 12, 0, 0)
ANSWERS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "answers" / "contract_examples.json").read_text(encoding="utf-8")
)


def result(result_id: int, service: str, data: Any, *, seconds: int = 0, time: float | None = None) -> ServiceResult:
    return ServiceResult(result_id, service, "success", data, time, T0 + timedelta(seconds=seconds))


def caption(text: str, *pairs: tuple[str, str]) -> dict[str, Any]:
    return {"predictions": [{"text": text, "emoji_mappings": [{"word": w, "emoji": e} for w, e in pairs]}]}


def boxed(*predictions: tuple[str, str, float, tuple[int, int, int, int]], **extra: Any) -> dict[str, Any]:
    """A detector's answer: (label, emoji, confidence, (x, y, width, height)) per prediction."""
    return {
        "predictions": [
            {"label": label, "emoji": emoji, "confidence": confidence, "bbox": bbox(box)}
            for label, emoji, confidence, box in predictions
        ],
        **extra,
    }


def bbox(box: tuple[int, int, int, int]) -> dict[str, int]:
    return dict(zip(("x", "y", "width", "height"), box, strict=True))


def merged(
    merged_id: int, cluster_id: str, box: tuple[int, int, int, int], detections: dict[str, float], labels: list[str]
) -> MergedBoxRow:
    """A merged_boxes row with the harmony fields (reference-behaviour.md §7.9)."""
    confidences = list(detections.values())
    return MergedBoxRow(
        merged_id,
        {
            "cluster_id": cluster_id,
            "emoji": cluster_id.rsplit("_", 1)[0],
            "labels": labels,
            "merged_bbox": bbox(box),
            "detection_count": len(detections),
            "avg_confidence": round(sum(confidences) / len(confidences), 3),
            "contributing_services": sorted(detections),
            "detections": [{"service": s, "confidence": c} for s, c in detections.items()],
            "harmonization_algorithm": "cross_service_clustering_v1",
            "source_result_ids": [106, 103, 102, 101],
        },
    )


def consensus(results: list[ServiceResult], boxes=(), post=(), config: VotingConfig = FIXED) -> dict[str, Any]:
    return compute_consensus(results, boxes, post, service_types=SERVICE_TYPES, config=config)


def listed(data: dict[str, Any]) -> list[str]:
    return [item["emoji"] for item in data["votes"]["consensus"]]


def item(data: dict[str, Any], emoji: str) -> dict[str, Any]:
    (found,) = [entry for entry in data["votes"]["consensus"] if entry["emoji"] == emoji]
    return found


def groups(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {group["emoji"]: group for group in data["debug"]["groups"]}


# ---------------------------------------------------------------------------------------------------------------
# reference-behaviour.md §8.9: the image of §7.12 (result ids 101-106 as there) and its merged boxes.

WORKED_RESULTS = [
    result(
        106,
        "clip",
        boxed(
            ("bench", "🪑", 0.42, (20, 380, 120, 60)),
            full_image=[
                {"label": "dog", "emoji": "🐕", "confidence": 0.64},
                {"label": "park", "emoji": "🏞️", "confidence": 0.30},
            ],
        ),
    ),
    result(
        103,
        "detectron2",
        boxed(("person", "🧑", 0.99, (95, 45, 210, 410)), ("frisbee", "🥏", 0.90, (300, 200, 40, 40))),
    ),
    result(
        102, "rtdetr", boxed(("person", "🧑", 0.95, (110, 40, 190, 420)), ("dog", "🐕", 0.70, (360, 310, 140, 110)))
    ),
    result(
        101,
        "yolov8",
        boxed(
            ("person", "🧑", 0.92, (100, 50, 200, 400)),
            ("dog", "🐕", 0.80, (350, 300, 150, 120)),
            ("person", "🧑", 0.55, (500, 60, 80, 200)),
        ),
    ),
    result(107, "blip", caption("a man walking a dog in the park", ("man", "🧑"), ("dog", "🐕"), ("park", "🏞️"))),
    result(
        108, "ollama", caption("A person walks a dog near a tree.", ("person", "🧑"), ("dog", "🐕"), ("tree", "🌳"))
    ),
    result(109, "nsfw2", {"predictions": [{"confidence": 0.99, "emoji": "", "nsfw": False}]}),
    result(110, "ocr", {"predictions": [{"text": "", "has_text": False, "emoji": "", "emoji_mappings": []}]}),
    result(111, "colors", ANSWERS["colors"]),
]
WORKED_BOXES = [
    merged(1, "🧑_1", (95, 40, 210, 420), {"detectron2": 0.99, "rtdetr": 0.95, "yolov8": 0.92}, ["person"]),
    merged(2, "🥏_1", (300, 200, 40, 40), {"detectron2": 0.90}, ["frisbee"]),
    merged(3, "🐕_1", (350, 300, 150, 120), {"rtdetr": 0.70, "yolov8": 0.80}, ["dog"]),
]

# emoji, voters, votes, spatial bonus, content bonus, classification bonus, weight, final, listed (the §8.9 table;
# 🪑 and 🌳 are blank there: one vote, no bonus → weight 1, final 2)
WORKED_TABLE = [
    ("🧑", {"blip", "llama", "detectron2", "rtdetr", "yolo", "merged_boxes"}, 6, 2, 1, 0, 9, 15, True),
    ("🐕", {"blip", "llama", "clip", "rtdetr", "yolo", "merged_boxes"}, 6, 1, 1, 0, 8, 14, True),
    ("🏞️", {"blip", "clip"}, 2, 0, 0, 0, 2, 4, True),
    ("🥏", {"detectron2"}, 1, 0, 0, 0, 1, 2, False),
    ("🪑", {"clip"}, 1, 0, 0, 0, 1, 2, False),
    ("🌳", {"llama"}, 1, 0, 0, 0, 1, 2, False),
]
BOTH_MODES = [pytest.param(FIXED, normalize_emoji, id="fixed"), pytest.param(REFERENCE, str, id="reference")]


@pytest.mark.parametrize(("config", "key"), BOTH_MODES)
@pytest.mark.parametrize("row", WORKED_TABLE, ids=[r[0] for r in WORKED_TABLE])
def test_worked_example_table(config: VotingConfig, key, row: tuple) -> None:
    """The example touches none of the fixed bugs: both modes give the §8.9 table."""
    emoji, voters, votes, spatial, content, classification, weight, final, included = row
    group = groups(consensus(WORKED_RESULTS, WORKED_BOXES, config=config))[key(emoji)]
    assert set(group["services"]) == voters
    assert (group["votes"], group["spatial_bonus"], group["content_bonus"], group["classification_bonus"]) == (
        votes,
        spatial,
        content,
        classification,
    )
    assert (group["evidence_weight"], group["final_score"], group["included"]) == (weight, final, included)


@pytest.mark.parametrize(("config", "key"), BOTH_MODES)
def test_worked_example_ranking_and_totals(config: VotingConfig, key) -> None:
    data = consensus(WORKED_RESULTS, WORKED_BOXES, config=config)
    assert listed(data) == ["🧑", "🐕", key("🏞️")]
    assert [(i["votes"], i["evidence_weight"], i["final_score"]) for i in data["votes"]["consensus"]] == [
        (6, 9, 15),
        (6, 8, 14),
        (2, 2, 4),
    ]
    assert data["debug"]["detection_count"] == 17
    assert data["debug"]["emoji_groups"] == 6
    assert data["special"] == {"text": {"detected": False}, "face": {"detected": False}, "nsfw": {"detected": False}}
    assert not any("validation" in i for i in data["votes"]["consensus"])
    park = item(data, key("🏞️"))
    assert park["instances"] == {"count": 1, "type": "non_spatial"}
    assert "bounding_boxes" not in park
    assert park["evidence"]["classification"] == {"service_count": 1, "sources": ["clip"]}


def test_worked_example_person_item_in_the_reference_shape() -> None:
    """§8.5's 🧑 item, with the fixes: services sorted, and the box names its cluster, labels and detections."""
    person = item(consensus(WORKED_RESULTS, WORKED_BOXES), "🧑")
    assert person == {
        "emoji": "🧑",
        "votes": 6,
        "evidence_weight": 9,
        "final_score": 15,
        "instances": {"count": 1, "type": "spatial"},
        "evidence": {
            "spatial": {"detection_count": 3, "avg_confidence": 0.953, "instance_count": 1},
            "semantic": {"service_count": 2, "words": ["man", "person"], "sources": ["blip", "llama"]},
            "classification": None,
            "specialized": None,
        },
        "services": ["blip", "detectron2", "llama", "merged_boxes", "rtdetr", "yolo"],
        "bounding_boxes": [
            {
                "cluster_id": "🧑_1",
                "merged_id": 1,
                "merged_bbox": {"x": 95, "y": 40, "width": 210, "height": 420},
                "emoji": "🧑",
                "label": "person",
                "detection_count": 3,
                "avg_confidence": 0.953,
                "detections": [
                    {"service": "detectron2", "confidence": 0.99},
                    {"service": "rtdetr", "confidence": 0.95},
                    {"service": "yolov8", "confidence": 0.92},
                ],
            }
        ],
    }


def test_a_boxs_label_in_the_consensus_is_the_one_its_picture_tag_and_export_give() -> None:
    # The consensus named a box by its first listed label ("man"), the tag, CSV and COCO by the label most of its
    # detections gave ("person").
    row = merged(1, "🧑_1", (95, 40, 210, 420), {"detectron2": 0.99, "rtdetr": 0.95, "yolov8": 0.92},
                 ["man", "person"])
    for detection, label in zip(row.merged_data["detections"], ("person", "person", "man"), strict=True):
        detection["label"] = label
    (box,) = item(consensus(WORKED_RESULTS, [row]), "🧑")["bounding_boxes"]
    assert box["label"] == box_label(row.merged_data) == "person"


def test_bounding_boxes_lose_their_cluster_in_reference_mode() -> None:
    """Reference [QUIRK] §8.5: cluster_id null, label = the emoji, detections []."""
    (box,) = item(consensus(WORKED_RESULTS, WORKED_BOXES, config=REFERENCE), "🧑")["bounding_boxes"]
    assert box == {
        "cluster_id": None,
        "merged_bbox": {"x": 95, "y": 40, "width": 210, "height": 420},
        "emoji": "🧑",
        "label": "🧑",
        "detection_count": 3,
        "avg_confidence": 0.953,
        "detections": [],
    }


def test_consensus_data_shape() -> None:
    data = consensus(WORKED_RESULTS, WORKED_BOXES)
    assert list(data) == [
        "services_count",
        "services_list",
        "total_processing_time",
        "latest_result_time",
        "consensus_algorithm",
        "votes",
        "special",
        "debug",
    ]
    assert data["services_count"] == 9
    assert data["services_list"] == [
        "blip", "clip", "colors", "detectron2", "nsfw2", "ocr", "ollama", "rtdetr", "yolov8",
    ]  # fmt: skip
    assert data["consensus_algorithm"] == "v3_voting_full_port"
    assert data["latest_result_time"] == "2025-09-03T12:00:00"
    assert data["debug"]["result_ids"] == [101, 102, 103, 106, 107, 108, 109, 110, 111]
    json.dumps(data)  # storable as JSONB as it is


# ---------------------------------------------------------------------------------------------------------------
# animal-farm-api.md §5.3: the §3 scene (the contract answers) with merged boxes 🐶 5, 🪑 5, 🧑 4.

SCENE_SERVICES = ["blip", "ollama", "clip", "xception", "yolov8", "rtdetr", "detectron2", "nsfw2", "colors", "metadata"]
SCENE_RESULTS = [result(i, name, ANSWERS[name]) for i, name in enumerate(SCENE_SERVICES, start=1)]
FIVE = ("clip", "xception", "yolov8", "rtdetr", "detectron2")
SCENE_BOXES = [
    merged(11, "🐶_1", (385, 211, 181, 165), dict.fromkeys(FIVE, 0.85), ["golden_retriever", "dog"]),
    merged(12, "🪑_1", (0, 148, 640, 279), dict.fromkeys(FIVE, 0.6), ["studio_couch", "couch"]),
    merged(13, "🧑_1", (209, 44, 238, 378), dict.fromkeys(("clip", "yolov8", "rtdetr", "detectron2"), 0.8), ["man"]),
]


def test_scene_example_in_reference_mode() -> None:
    """§5.3: 🐶 and 🪑 8 votes, 8 + 4 + 1 = 13, final 21; 🧑 7 + 3 + 1 = 11, final 18; 🧥 2, final 4; the 🪑/🐶
    tie goes to 🪑, whose first vote (BLIP's "sitting") came before "dog"."""
    data = consensus(SCENE_RESULTS, SCENE_BOXES, config=REFERENCE)
    assert [(i["emoji"], i["votes"], i["evidence_weight"], i["final_score"]) for i in data["votes"]["consensus"]] == [
        ("🪑", 8, 13, 21),
        ("🐶", 8, 13, 21),
        ("🧑", 7, 11, 18),
        ("🧥", 2, 2, 4),
    ]
    assert item(data, "🪑")["evidence"]["classification"] is None


def test_scene_example_keeps_classification_beside_boxes() -> None:
    """Fixed: clip and xception also classify the whole image as 🪑, and clip as 🐶. The reference lost those
    labels because the same services had boxed 🪑 and 🐶. Two classifiers for 🪑 give its classification bonus
    (2 − 1 = 1): 8 + 4 + 1 + 1 = 14, final 22; one classifier for 🐶 gives none: 13, final 21."""
    data = consensus(SCENE_RESULTS, SCENE_BOXES)
    assert [(i["emoji"], i["votes"], i["evidence_weight"], i["final_score"]) for i in data["votes"]["consensus"]] == [
        ("🪑", 8, 14, 22),
        ("🐶", 8, 13, 21),
        ("🧑", 7, 11, 18),
        ("🧥", 2, 2, 4),
    ]
    assert item(data, "🪑")["evidence"]["classification"] == {"service_count": 2, "sources": ["clip", "xception"]}
    assert item(data, "🐶")["evidence"]["classification"] == {"service_count": 1, "sources": ["clip"]}
    assert item(data, "🪑")["evidence"]["semantic"] == {
        "service_count": 2,
        "words": ["sitting", "couch"],
        "sources": ["blip", "llama"],
    }
    assert item(data, "🐶")["services"] == [
        "blip", "clip", "detectron2", "llama", "merged_boxes", "rtdetr", "xception", "yolo",
    ]  # fmt: skip


def test_ties_rank_by_emoji_not_by_first_vote() -> None:
    """🪑 and 🐶 both get blip + llama: 2 votes, content bonus 1, weight 3. The reference lists the first-voted
    first (🪑, "couch" comes first); fixed, the emoji decides (🐶 U+1F436 < 🪑 U+1FA91), whatever the wording."""
    rows = [
        result(1, "blip", caption("a couch and a dog", ("couch", "🪑"), ("dog", "🐶"))),
        result(2, "ollama", caption("A couch with a dog.", ("couch", "🪑"), ("dog", "🐶"))),
    ]
    assert listed(consensus(rows, config=REFERENCE)) == ["🪑", "🐶"]
    assert listed(consensus(rows)) == ["🐶", "🪑"]
    assert [(i["votes"], i["evidence_weight"]) for i in consensus(rows)["votes"]["consensus"]] == [(2, 3), (2, 3)]


def test_output_does_not_depend_on_row_order() -> None:
    post = [
        PostprocessingRow(1, 13, "face", "success", ANSWERS["face"]),
        PostprocessingRow(2, 13, "pose", "success", ANSWERS["pose"]),
        PostprocessingRow(3, 11, "colors", "success", ANSWERS["colors"]),
    ]
    expected = consensus(SCENE_RESULTS, SCENE_BOXES, post)
    for shuffle in itertools.islice(itertools.permutations(range(len(SCENE_RESULTS))), 0, 40, 7):
        rows = [SCENE_RESULTS[i] for i in shuffle]
        assert consensus(rows, SCENE_BOXES[::-1], post[::-1]) == expected


# ---------------------------------------------------------------------------------------------------------------
# Curation (reference-behaviour.md §8.6), face and pose read from the person boxes' postprocessing rows.

PERSON_RESULTS = [
    result(1, "blip", caption("a man with a dog", ("man", "🧑"), ("dog", "🐶"))),
    result(2, "yolov8", boxed(("person", "🧑", 0.9, (10, 10, 100, 300)), ("dog", "🐶", 0.8, (200, 200, 90, 80)))),
    result(3, "rtdetr", boxed(("person", "🧑", 0.9, (12, 8, 98, 305)), ("dog", "🐶", 0.8, (205, 198, 88, 84)))),
]
PERSON_BOXES = [
    merged(21, "🧑_1", (10, 8, 102, 305), {"yolov8": 0.9, "rtdetr": 0.9}, ["person"]),
    merged(22, "🐶_1", (200, 198, 93, 84), {"yolov8": 0.8, "rtdetr": 0.8}, ["dog"]),
]
FACE = ANSWERS["face"]
POSE = ANSWERS["pose"]
NO_FACE = {"service": "face", "status": "success", "predictions": [], "metadata": {"processing_time": 0.02}}


def post(pid: int, box: int | None, service: str, data: Any, status: str = "success") -> PostprocessingRow:
    return PostprocessingRow(pid, box, service, status, data)


# 🧑: blip, yolo, rtdetr, merged_boxes = 4 votes, spatial bonus 2 − 1 = 1 → weight 5, final 9 before curation.
PERSON_CURATION = [
    pytest.param(FIXED, [], 5, 9, None, id="no-face-no-pose"),
    pytest.param(FIXED, [post(1, 21, "face", FACE)], 6, 10, ["face_confirmed"], id="face-in-person-box"),
    pytest.param(FIXED, [post(1, 21, "pose", POSE)], 6, 10, ["pose_confirmed"], id="pose-in-person-box"),
    pytest.param(
        FIXED,
        [post(1, 21, "face", FACE), post(2, 21, "pose", POSE)],
        7,
        11,
        ["face_confirmed", "pose_confirmed"],
        id="face-and-pose",
    ),
    pytest.param(FIXED, [post(1, 22, "face", FACE)], 5, 9, None, id="face-in-a-dog-box-proves-nothing"),
    pytest.param(FIXED, [post(1, 21, "face", NO_FACE)], 5, 9, None, id="no-face-found"),
    pytest.param(FIXED, [post(1, 21, "face", {})], 5, 9, None, id="empty-data"),
    pytest.param(FIXED, [post(1, 21, "face", FACE, status="error")], 5, 9, None, id="failed-call"),
    pytest.param(FIXED, [post(1, None, "face", FACE)], 5, 9, None, id="orphaned-row"),
    pytest.param(FIXED, [post(1, 99, "face", FACE)], 5, 9, None, id="row-of-a-replaced-box"),
    pytest.param(
        FIXED, [post(1, 21, "face", FACE), post(2, 21, "face", NO_FACE)], 5, 9, None, id="latest-row-per-box-decides"
    ),
    pytest.param(
        FIXED,
        [post(1, 21, "face", FACE), post(2, 21, "face", FACE)],
        6,
        10,
        ["face_confirmed"],
        id="duplicate-rows-count-once",
    ),
    pytest.param(FIXED, [post(1, 21, "caption_score_blip", {"caption_score": {}})], 5, 9, None, id="caption-score"),
    pytest.param(
        REFERENCE,
        [post(1, 21, "face", FACE), post(2, 21, "pose", POSE)],
        5,
        9,
        None,
        id="reference-never-sees-crops",
    ),
]


@pytest.mark.parametrize(("config", "rows", "weight", "final", "validation"), PERSON_CURATION)
def test_person_curation(config: VotingConfig, rows: list, weight: int, final: int, validation: list | None) -> None:
    person = item(consensus(PERSON_RESULTS, PERSON_BOXES, rows, config=config), "🧑")
    assert (person["votes"], person["evidence_weight"], person["final_score"]) == (4, weight, final)
    assert person.get("validation") == validation


@pytest.mark.parametrize("config", [FIXED, REFERENCE], ids=["fixed", "reference"])
def test_listed_face_emoji_confirms_a_person_as_upstream(config: VotingConfig) -> None:
    """The reference's own rule still holds: 🙂 listed (a whole-image face result and a caption word)."""
    rows = [*PERSON_RESULTS, result(4, "face", FACE), result(5, "ollama", caption("A smiling face.", ("face", "🙂")))]
    data = consensus(rows, PERSON_BOXES, config=config)
    assert item(data, "🙂")["evidence"]["specialized"] == ["face"]
    assert item(data, "🧑")["validation"] == ["face_confirmed"]
    assert item(data, "🧑")["evidence_weight"] == 6


def nsfw_rows(*people: ServiceResult) -> list[ServiceResult]:
    return [
        result(1, "nsfw2", {"predictions": [{"confidence": 0.912, "emoji": "🔞", "nsfw": True}]}),
        result(2, "blip", caption("a nude painting", ("nude", "🔞"))),
        *people,
    ]


def person_vote(result_id: int, service: str, emoji: str) -> ServiceResult:
    return result(result_id, service, boxed(("person", emoji, 0.9, (0, 0, 50, 50))))


# §8.9 "🔞 curation": nsfw2 + a caption → 2 votes, weight 2, final 4; ±1 with or without a listed person.
NSFW_CURATION = [
    pytest.param(
        FIXED, [person_vote(3, "yolov8", "🧑"), person_vote(4, "rtdetr", "🧑")], 3, 5, "human_context_confirmed",
        id="with-person",
    ),
    pytest.param(FIXED, [], 1, 3, "suspicious_no_humans", id="without-person"),
    pytest.param(FIXED, [person_vote(3, "yolov8", "🧑")], 1, 3, "suspicious_no_humans", id="unlisted-person"),
    pytest.param(
        FIXED, [person_vote(3, "yolov8", "👩"), person_vote(4, "rtdetr", "🧑")], 3, 5, "human_context_confirmed",
        id="woman-counts-as-person",
    ),
    pytest.param(
        REFERENCE, [person_vote(3, "yolov8", "👩"), person_vote(4, "rtdetr", "🧑")], 1, 3, "suspicious_no_humans",
        id="reference-splits-woman-and-person",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("config", "people", "weight", "final", "validation"), NSFW_CURATION)
def test_nsfw_curation(config: VotingConfig, people: list, weight: int, final: int, validation: str) -> None:
    nsfw = item(consensus(nsfw_rows(*people), config=config), "🔞")
    assert (nsfw["votes"], nsfw["evidence_weight"], nsfw["final_score"]) == (2, weight, final)
    assert nsfw["validation"] == [validation]
    assert nsfw["evidence"]["specialized"] == ["nsfw"]


def test_curation_does_not_resort() -> None:
    """A face lifts 🧑 to weight 6 above 🐶's 5, but the list keeps its pre-curation order (as upstream)."""
    data = consensus(PERSON_RESULTS, PERSON_BOXES, [post(1, 21, "face", FACE)])
    assert [(i["emoji"], i["evidence_weight"]) for i in data["votes"]["consensus"]] == [("🐶", 5), ("🧑", 6)]


# ---------------------------------------------------------------------------------------------------------------
# Special detections (reference-behaviour.md §8.7).

OCR_NO_TEXT = {"predictions": [{"text": "", "has_text": False, "emoji": "", "text_regions": [], "emoji_mappings": []}]}
NSFW_FLAGGED = {"predictions": [{"confidence": 0.912, "emoji": "🔞", "nsfw": True}]}

SPECIAL = [
    pytest.param(
        FIXED, [result(1, "ocr", ANSWERS["ocr"])], [], "text",
        {"emoji": "💬", "detected": True, "confidence": 1.0, "content": "FRESH BREAD HOT PIZZA"},
        id="text-without-confidence-gets-1",
    ),
    pytest.param(FIXED, [result(1, "ocr", OCR_NO_TEXT)], [], "text", {"detected": False}, id="no-text"),
    pytest.param(FIXED, [], [], "text", {"detected": False}, id="no-ocr"),
    pytest.param(
        FIXED, [result(1, "nsfw2", NSFW_FLAGGED)], [], "nsfw",
        {"emoji": "🔞", "detected": True, "confidence": 0.912}, id="nsfw-flagged",
    ),
    pytest.param(FIXED, [result(1, "nsfw2", ANSWERS["nsfw2"])], [], "nsfw", {"detected": False}, id="nsfw-safe"),
    pytest.param(
        FIXED, PERSON_RESULTS, [post(1, 21, "face", FACE), post(2, 21, "pose", POSE)], "face",
        {"emoji": "🙂", "detected": True, "confidence": 0.912, "pose": True, "cluster_id": "🧑_1"},
        id="face-and-pose-in-a-person-box",
    ),
    pytest.param(
        FIXED, PERSON_RESULTS, [post(1, 21, "face", FACE)], "face",
        {"emoji": "🙂", "detected": True, "confidence": 0.912, "pose": False, "cluster_id": "🧑_1"},
        id="face-without-pose",
    ),
    pytest.param(
        FIXED, [result(1, "face", FACE)], [], "face",
        {"emoji": "🙂", "detected": True, "confidence": 0.912, "pose": None, "cluster_id": None},
        id="whole-image-face-result",
    ),
    pytest.param(
        REFERENCE, [result(1, "face", FACE)], [], "face",
        {"emoji": "🙂", "detected": True, "confidence": 0.912, "pose": None}, id="reference-face-result",
    ),
    pytest.param(
        REFERENCE, PERSON_RESULTS, [post(1, 21, "face", FACE)], "face", {"detected": False},
        id="reference-never-sees-crops",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("config", "rows", "post_rows", "kind", "expected"), SPECIAL)
def test_special_detections(config: VotingConfig, rows: list, post_rows: list, kind: str, expected: dict) -> None:
    assert consensus(rows, PERSON_BOXES, post_rows, config=config)["special"][kind] == expected


# ---------------------------------------------------------------------------------------------------------------
# The other reference bugs we fix.


def test_full_image_votes_survive_empty_predictions() -> None:
    """clip found no box but classified the whole image as 🐕; with blip that makes 2 votes. The reference
    skipped clip entirely, leaving 🐕 one vote short of the list."""
    rows = [
        result(1, "blip", caption("a dog", ("dog", "🐕"))),
        result(2, "clip", {"predictions": [], "full_image": [{"label": "dog", "emoji": "🐕", "confidence": 0.64}]}),
    ]
    dog = item(consensus(rows), "🐕")
    assert (dog["votes"], dog["evidence_weight"], dog["final_score"]) == (2, 2, 4)
    assert dog["evidence"]["classification"] == {"service_count": 1, "sources": ["clip"]}
    reference = consensus(rows, config=REFERENCE)
    assert listed(reference) == []
    assert groups(reference)["🐕"]["votes"] == 1


def test_duplicate_rows_never_count_twice() -> None:
    """Three blip rows: an older success (🐱), the latest success (🐶), a newer error. Only the latest success
    votes and counts; its time is summed once."""
    rows = [
        result(1, "blip", caption("a cat", ("cat", "🐱")), seconds=0, time=0.5),
        result(2, "blip", caption("a dog", ("dog", "🐶")), seconds=60, time=0.4),
        ServiceResult(3, "blip", "error", {"error": {"message": "timeout"}}, 30.0, T0 + timedelta(seconds=120)),
        result(4, "ollama", caption("A dog.", ("dog", "🐶")), seconds=30, time=2.0),
    ]
    data = consensus(rows)
    assert listed(data) == ["🐶"]
    assert "🐱" not in groups(data)
    assert (data["services_count"], data["services_list"]) == (2, ["blip", "ollama"])
    assert data["total_processing_time"] == 2.4
    assert data["latest_result_time"] == "2025-09-03T12:01:00"
    assert (data["debug"]["result_ids"], data["debug"]["superseded_result_ids"]) == ([2, 4], [1])


def test_total_processing_time_is_summed() -> None:
    """Row times where stored, else the answer's metadata.processing_time: blip 0.412 (row) + ollama 2.184
    (answer) + a row without either 0 = 2.596. The reference summed NULL columns: always 0."""
    rows = [
        result(1, "blip", ANSWERS["blip"], time=0.412),
        result(2, "ollama", ANSWERS["ollama"]),
        result(3, "nsfw2", {"predictions": []}),
    ]
    assert consensus(rows)["total_processing_time"] == 2.596


def test_caption_scores_never_vote() -> None:
    rows = [
        result(1, "blip", caption("a dog", ("dog", "🐶"))),
        result(2, "caption_score", ANSWERS["caption_score"]),
        result(3, "caption_score_blip", {"predictions": [{"emoji": "🐶", "confidence": 0.3}]}),
    ]
    data = consensus(rows)
    assert groups(data)["🐶"]["services"] == ["blip"]
    assert data["services_list"] == ["blip", "caption_score", "caption_score_blip"]


def test_variant_emoji_group_together() -> None:
    """🏞️ (with U+FE0F) and 🏞 are one object: 2 votes, listed. The reference grouped raw strings."""
    rows = [
        result(1, "blip", caption("a park", ("park", "🏞️"))),
        result(2, "clip", {"predictions": [], "full_image": [{"label": "park", "emoji": "🏞", "confidence": 0.3}]}),
        result(3, "xception", boxed(("park", "🏞", 0.5, (0, 0, 10, 10)))),
    ]
    assert [(i["emoji"], i["votes"]) for i in consensus(rows)["votes"]["consensus"]] == [("🏞", 3)]
    assert listed(consensus(rows, config=REFERENCE)) == []


def test_no_rows_gives_an_empty_consensus() -> None:
    data = consensus([ServiceResult(1, "blip", "error", {}, None, T0)])
    assert data["services_count"] == 0
    assert data["total_processing_time"] == 0.0
    assert data["latest_result_time"] is None
    assert data["votes"] == {"consensus": []}


def test_string_data_is_parsed_as_json() -> None:
    rows = [
        result(1, "blip", json.dumps(caption("a dog", ("dog", "🐶")))),
        result(2, "ollama", json.dumps(caption("A dog.", ("dog", "🐶")))),
        result(3, "rtdetr", "not json"),
    ]
    assert listed(consensus(rows)) == ["🐶"]


def test_reference_config_switches_every_fix_off() -> None:
    switches = (
        "normalize_emoji",
        "full_image_without_predictions",
        "full_image_beside_boxed_vote",
        "person_checks_from_boxes",
        "boxes_carry_cluster_id",
        "ties_by_emoji",
    )
    assert all(getattr(FIXED, name) for name in switches)
    assert not any(getattr(REFERENCE, name) for name in switches)
    assert VotingConfig.reference(ties_by_emoji=True).ties_by_emoji
