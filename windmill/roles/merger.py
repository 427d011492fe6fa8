"""The merger role: recompute an image's harmonized boxes from the latest answer of every detector, replace
the stored set in one transaction (serialised per image), and dispatch new boxes to postprocessing. A box that
is a stored one again (same class, IoU ≥ 0.85: one more detector nudged it) keeps its row and its
postprocessing; only new boxes are analysed, and boxes that disappeared take their postprocessing with them."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from windmill.db.jsonb import as_stored
from windmill.db.queries import fetch_value, query
from windmill.harmony import DetectorResult, HarmonyConfig, MergedBox, harmonize
from windmill.harmony.identity import match_boxes
from windmill.jobs import Job
from windmill.jobs.queues import MERGE_QUEUE
from windmill.locks import Product, lock_image
from windmill.roles.registry import Role, RoleContext, register_role

log = logging.getLogger(__name__)


def crop_key(box: MergedBox) -> str:
    """The box's class and integer box: what it crops, and what tells it from the image's other boxes."""
    x, y, width, height = box.bbox
    return f"{box_class(box)}:{x},{y},{width},{height}"


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


def merge_image(conn: psycopg.Connection, image_id: int, config: HarmonyConfig, worker_id: str) -> MergeOutcome:
    """Recompute and store one image's boxes; queue postprocessing of the new ones (which services a box gets is
    SQL's rule, enqueue_boxes_postprocessing). One transaction."""
    with conn.transaction():
        lock_image(conn, Product.MERGED_BOXES, image_id)
        rows = conn.execute(query("latest_detector_results"), {"image_id": image_id}).fetchall()
        boxes = harmonize([DetectorResult(result_id, service, data) for result_id, service, data in rows], config)
        stored_rows = conn.execute(query("image_boxes"), {"image_id": image_id}).fetchall()
        stored = [(merged_id, parse_crop_key(key)) for merged_id, key, _ in stored_rows]
        stored_data = {merged_id: data for merged_id, _, data in stored_rows}
        kept = match_boxes(stored, [(box_class(box), box.bbox) for box in boxes])
        gone = [merged_id for merged_id, _ in stored if merged_id not in kept.values()]
        if gone:
            conn.execute(query("delete_boxes"), {"merged_ids": gone})
        changed_boxes, new_boxes = [], []
        for index, box in enumerate(boxes):
            merged_data = box.to_merged_data()
            row = {"merged_data": merged_data, "crop_key": crop_key(box),
                   "source_result_ids": list(box.source_result_ids)}
            if index not in kept:
                new_boxes.append(row)
            elif as_stored(merged_data) != stored_data[kept[index]]:  # an unchanged box costs no write
                changed_boxes.append({**row, "merged_id": kept[index]})
        updated = 0
        if changed_boxes:
            updated = conn.execute(query("update_boxes"), {"boxes": Jsonb(changed_boxes),
                                                           "worker_id": worker_id}).rowcount
        inserted: list[int] = []
        if new_boxes:
            # One statement inserts them in order: ascending ids are the boxes' order.
            inserted = sorted(row[0] for row in conn.execute(query("insert_boxes"), {
                "image_id": image_id, "boxes": Jsonb(new_boxes), "worker_id": worker_id}))
        if inserted:
            conn.execute(query("enqueue_new_boxes_postprocessing"), {"merged_ids": inserted})
        conn.execute(query("record_merge"), {
            "image_id": image_id, "boxes": len(boxes), "source_result_ids": sorted(row[0] for row in rows),
            "worker_id": worker_id, "changed": bool(gone or inserted or updated)})
    return MergeOutcome(len(boxes), inserted, len(kept), len(gone))


@register_role("merger", "harmonizes the detectors' boxes of an image into merged boxes (queue merge)")
def merger_role(context: RoleContext) -> Role:
    config = context.settings.harmony

    def handle(job: Job) -> None:
        image_id = job.about_image
        with context.pool.connection() as conn:
            outcome = merge_image(conn, image_id, config, context.worker_id)
        log.debug("image %d: %d boxes (%d new, %d kept, %d gone)", image_id, outcome.boxes, len(outcome.inserted),
                  outcome.kept, outcome.deleted, extra={"action": "merged"})

    return Role(name="merger", queues=(MERGE_QUEUE,), handle=handle)
