"""The consensus role: recompute an image's V3 vote from its latest rows and replace its consensus row,
serialised per image so that the last recompute always sees every answer committed before it. The row records
what the vote read (the answers, the box set's revision, the face/pose rows), so the backfill can tell a stale
consensus by content."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from windmill.db.queries import fetch_value, query
from windmill.jobs import Job
from windmill.jobs.queues import CONSENSUS_QUEUE
from windmill.locks import Product, lock_image
from windmill.roles.registry import Role, RoleContext, register_role
from windmill.voting import MergedBoxRow, PostprocessingRow, ServiceResult, compute_consensus, latest_success_rows


@dataclass(frozen=True)
class ConsensusInputs:
    """An image's rows the vote reads, and the revision of its box set (read in the same statement as the boxes)."""

    results: list[ServiceResult]
    boxes: list[MergedBoxRow]
    postprocessing: list[PostprocessingRow]
    boxes_revision: int

    def recorded(self) -> dict[str, Any]:
        """What a stored consensus says it was computed from: the answers voted on (the latest success row of
        each service, as the vote picks them), the box revision and the face/pose rows, ids sorted."""
        voted, _ = latest_success_rows(self.results)
        return {"source_result_ids": sorted(row.result_id for row in voted),
                "boxes_revision": self.boxes_revision,
                "postprocessing_ids": sorted(row.postprocessing_id for row in self.postprocessing)}


def read_inputs(conn: psycopg.Connection, image_id: int) -> ConsensusInputs:
    results = [ServiceResult(result_id, service, status, data, processing_time, created)
               for result_id, service, status, data, processing_time, created
               in conn.execute(query("consensus_results"), {"image_id": image_id})]
    box_rows = conn.execute(query("consensus_boxes"), {"image_id": image_id}).fetchall()
    boxes = [MergedBoxRow(merged_id, data) for _, merged_id, data in box_rows if merged_id is not None]
    post = [PostprocessingRow(*row) for row in conn.execute(query("consensus_postprocessing"), {"image_id": image_id})]
    return ConsensusInputs(results, boxes, post, box_rows[0][0])


def consensus_for_image(conn: psycopg.Connection, image_id: int,
                        service_types: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The consensus of the image's current rows (pure vote over what the database holds now)."""
    return vote(read_inputs(conn, image_id), service_types)


def vote(inputs: ConsensusInputs, service_types: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    return compute_consensus(inputs.results, inputs.boxes, inputs.postprocessing, service_types=service_types)


def recompute_consensus(conn: psycopg.Connection, image_id: int, service_types: Mapping[str, Sequence[str]],
                        worker_id: str) -> dict[str, Any] | None:
    """Vote again and store the result; None when the stored consensus already records the very rows the vote would
    read now (a vote over the same rows gives the same consensus), so neither they nor the vote are loaded. Box
    changes, colors and caption scores queue a vote that often finds nothing it reads changed."""
    with conn.transaction():
        lock_image(conn, Product.CONSENSUS, image_id)
        if fetch_value(conn, "consensus_current", {"image_id": image_id}):
            return None
        started = time.perf_counter()
        inputs = read_inputs(conn, image_id)
        data = vote(inputs, service_types)
        conn.execute(query("store_consensus"), {"image_id": image_id, "consensus_data": Jsonb(data),
                                                "processing_time": time.perf_counter() - started,
                                                "worker_id": worker_id, **inputs.recorded()})
    return data


@register_role("consensus", "recomputes an image's V3 consensus from its latest answers (queue consensus)")
def consensus_role(context: RoleContext) -> Role:
    service_types = {service.name: service.service_type for service in context.catalog.services}

    def handle(job: Job) -> None:
        image_id = job.about_image
        with context.pool.connection() as conn:
            recompute_consensus(conn, image_id, service_types, context.worker_id)

    return Role(name="consensus", queues=(CONSENSUS_QUEUE,), handle=handle)
