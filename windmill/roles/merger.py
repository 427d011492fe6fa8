"""The merger role: recompute an image's harmonized boxes from the latest answer of every detector, replace
the stored set in one transaction (serialised per image), and dispatch new boxes to postprocessing. A box that
is a stored one again (same class, IoU ≥ 0.85: one more detector nudged it) keeps its row and its
postprocessing; only new boxes are analysed, and boxes that disappeared take their postprocessing with them."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from windmill.db.jsonb import as_stored
from windmill.db.pipelined import pipelined_transaction
from windmill.db.queries import fetch_value, first_row, query
from windmill.harmony import DetectorResult, HarmonyConfig, MergedBox, harmonize
from windmill.harmony.identity import match_boxes
from windmill.jobs import Job
from windmill.jobs.queues import MERGE_QUEUE
from windmill.locks import Product
from windmill.roles.registry import Role, RoleContext, register_role

log = logging.getLogger(__name__)


# The longest class a crop key spells out. The key is indexed (merged_boxes_image_crop_key), and a B-tree entry holds
# at most 2,704 bytes: a class longer than this (a label of thousands of characters without an emoji, stored before
# normalisation cut labels to 200 characters) is written as its first characters and a digest of the whole.
KEY_CLASS_CHARS = 200


def crop_key(box: MergedBox) -> str:
    """The box's class and integer box: what it crops, and what tells it from the image's other boxes."""
    x, y, width, height = box.bbox
    return f"{key_class(box)}:{x},{y},{width},{height}"


def key_class(box: MergedBox) -> str:
    """The box's class as its crop key spells it (parse_crop_key gives it back)."""
    cls = box_class(box)
    if len(cls) <= KEY_CLASS_CHARS:
        return cls
    digest = hashlib.sha256(cls.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{cls[:KEY_CLASS_CHARS - len(digest) - 1]}#{digest}"


def box_class(box: MergedBox) -> str:
    return box.emoji or box.label_class


def postprocessing_of(conn: psycopg.Connection, box: MergedBox) -> tuple[str, ...]:
    """The postprocessing services this box gets, by SQL's rule (what enqueue_boxes_postprocessing queues)."""
    return tuple(fetch_value(conn, "box_postprocessing", {"merged_data": Jsonb(box.to_merged_data()),
                                                          "crop_key": crop_key(box)}))


def parse_crop_key(key: str) -> tuple[str, tuple[int, int, int, int]]:
    cls, _, numbers = key.rpartition(":")
    x, y, width, height = (int(n) for n in numbers.split(","))
    return cls, (x, y, width, height)


@dataclass(frozen=True)
class MergeOutcome:
    boxes: int
    inserted: list[int]
    kept: int
    deleted: int


@dataclass(frozen=True)
class MergeWrites:
    """What a merge changes in the stored boxes: the ids of the boxes gone, the boxes seen again whose data changed
    (with their merged_id), and the new boxes, in the recomputed set's order."""

    gone: list[int]
    changed: list[dict[str, Any]]
    new: list[dict[str, Any]]
    kept: int


def plan_writes(boxes: list[MergedBox], stored_rows: list[tuple[int, str, Any]]) -> MergeWrites:
    """Match the recomputed boxes against the stored ones (merged_id, crop_key, merged_data): a box that is a stored
    one again keeps its row, and is written only when its data changed."""
    stored = [(merged_id, parse_crop_key(key)) for merged_id, key, _ in stored_rows]
    stored_data = {merged_id: data for merged_id, _, data in stored_rows}
    kept = match_boxes(stored, [(key_class(box), box.bbox) for box in boxes])
    gone = [merged_id for merged_id, _ in stored if merged_id not in kept.values()]
    changed, new = [], []
    for index, box in enumerate(boxes):
        merged_data = box.to_merged_data()
        row = {"merged_data": merged_data, "crop_key": crop_key(box), "source_result_ids": list(box.source_result_ids)}
        if index not in kept:
            new.append(row)
        elif as_stored(merged_data) != stored_data[kept[index]]:  # an unchanged box costs no write
            changed.append({**row, "merged_id": kept[index]})
    return MergeWrites(gone, changed, new, len(kept))


def merge_image(conn: psycopg.Connection, image_id: int, config: HarmonyConfig, worker_id: str) -> MergeOutcome:
    """Recompute and store one image's boxes; queue postprocessing of the new ones (which services a box gets is
    SQL's rule, enqueue_boxes_postprocessing). One transaction of two statements (sql/0108): the lock and the reads,
    then every write; two round trips (windmill/db/pipelined.py): BEGIN with the reads, the writes with COMMIT."""
    with pipelined_transaction(conn):
        answers, stored_rows = [], []
        for result_id, service, merged_id, key, data in conn.execute(query("merge_inputs"), {
                "image_id": image_id, "lock_namespace": int(Product.MERGED_BOXES)}).fetchall():
            if merged_id is None:
                answers.append(DetectorResult(result_id, service, data))
            else:
                stored_rows.append((merged_id, key, data))
        boxes = harmonize(answers, config)
        writes = plan_writes(boxes, stored_rows)
        stored = conn.execute(query("store_merge"), {
            "image_id": image_id, "worker_id": worker_id, "gone": writes.gone, "changed": Jsonb(writes.changed),
            "new": Jsonb(writes.new), "boxes": len(boxes),
            "source_result_ids": sorted(answer.result_id for answer in answers)})
    inserted: list[int] = first_row(stored, "store_merge")[0]  # its row came with the COMMIT's answer
    return MergeOutcome(len(boxes), inserted, writes.kept, len(writes.gone))


@register_role("merger", "harmonizes the detectors' boxes of an image into merged boxes (queue merge)")
def merger_role(context: RoleContext) -> Role:
    config = context.settings.harmony

    def handle(job: Job) -> None:
        image_id = job.about_image
        with context.pool.connection() as conn:
            outcome = merge_image(conn, image_id, config, context.worker_id)
        log.debug("image %d: %d boxes (%d new, %d kept, %d gone)", image_id, outcome.boxes, len(outcome.inserted),
                  outcome.kept, outcome.deleted, extra={"action": "merged"})

    with context.pool.connection() as conn:
        delay_s = float(fetch_value(conn, "merge_delay_s"))
    # Answers committed within 5 ms of each other share one claim.
    return Role(name="merger", queues=(MERGE_QUEUE,), handle=handle, claim_delay_s=delay_s, claim_together_s=0.005)
