"""The consensus role: recompute an image's V3 vote from its latest rows and replace its consensus row,
serialised per image so that the last recompute always sees every answer committed before it."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from windmill.db.queries import query
from windmill.jobs import Job
from windmill.locks import Product, lock_image
from windmill.voting import MergedBoxRow, PostprocessingRow, ServiceResult, compute_consensus
from windmill.worker.registry import Role, RoleContext, register_role

CONSENSUS_QUEUE = "consensus"


def consensus_for_image(conn: psycopg.Connection, image_id: int,
                        service_types: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The consensus of the image's current rows (pure vote over what the database holds now)."""
    results = [ServiceResult(result_id, service, status, data, processing_time, created)
               for result_id, service, status, data, processing_time, created
               in conn.execute(query("consensus_results"), {"image_id": image_id})]
    boxes = [MergedBoxRow(merged_id, data) for merged_id, data in conn.execute(query("consensus_boxes"),
                                                                               {"image_id": image_id})]
    post = [PostprocessingRow(*row) for row in conn.execute(query("consensus_postprocessing"), {"image_id": image_id})]
    return compute_consensus(results, boxes, post, service_types=service_types)


def recompute_consensus(conn: psycopg.Connection, image_id: int, service_types: Mapping[str, Sequence[str]],
                        worker_id: str) -> dict[str, Any]:
    with conn.transaction():
        lock_image(conn, Product.CONSENSUS, image_id)
        started = time.perf_counter()
        data = consensus_for_image(conn, image_id, service_types)
        conn.execute(query("store_consensus"), {"image_id": image_id, "consensus_data": Jsonb(data),
                                                "processing_time": time.perf_counter() - started,
                                                "worker_id": worker_id})
    return data


@register_role("consensus")
def consensus_role(context: RoleContext) -> Role:
    service_types = {service.name: service.service_type for service in context.catalog.services}

    def handle(job: Job) -> None:
        image_id = job.image_id if job.image_id is not None else int(job.payload["image_id"])
        with context.pool.connection() as conn:
            recompute_consensus(conn, image_id, service_types, context.worker_id)

    return Role(name="consensus", queues=(CONSENSUS_QUEUE,), handle=handle)
