"""The chaos run's end audit: every answer accounted for, every product equal to a fresh recompute from the final
rows, by content; nothing left for the backfill to repair; nothing left running, waiting, dead or queued.

Each check can fail (tests/test_chaos_audit.py breaks the state one way per check and sees it reported); none
restates what a constraint already guarantees (postprocessing rows of a vanished box, for instance, cannot exist:
ON DELETE CASCADE).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
import psycopg
from pika.adapters.blocking_connection import BlockingConnection

from windmill.broker.queues import dead_letter_queue, queue_depth
from windmill.catalog import Catalog
from windmill.db.jsonb import as_stored
from windmill.db.queries import fetch_row, fetch_value, query
from windmill.harmony import DetectorResult, HarmonyConfig, harmonize
from windmill.roles.consensus import consensus_for_image
from windmill.roles.merger import crop_key
from windmill.upkeep import run_backfill

PRIMARY = "primary"
EXAMPLES = 5  # per check, in the report

ANSWERS = "answers"
BOXES = "boxes"
POSTPROCESSING = "postprocessing"
CONSENSUS = "consensus"
CAPTION_SCORES = "caption scores"
BACKFILL = "final backfill"
JOBS = "jobs"
QUEUES = "queues"
SERVICES_DOWN = "services down"
CHECKS = {
    ANSWERS: "one answer row per image × service: success, or the service's error/timeout with its reason",
    BOXES: "each image's boxes (every field, and the answer ids they and the merge record name) equal a fresh "
           "harmonization of the latest detector answers",
    POSTPROCESSING: "each box has exactly the postprocessing its class needs, failures with their reason",
    CONSENSUS: "each image's consensus equals a fresh vote over its final rows",
    CAPTION_SCORES: "each latest caption has exactly one score, of that caption",
    BACKFILL: "the final backfill found nothing to repair",
    JOBS: "no job running, waiting for a retry or dead",
    QUEUES: "no task left in RabbitMQ or in the ledger of tasks in flight; every dead-lettered task has its row",
    SERVICES_DOWN: "no answer, postprocessing row or caption score failed for want of a connection: the calls "
                   "waited out the farm's outage",
}


@dataclass
class Check:
    """One end condition: how many things violate it, and the first few."""

    name: str
    failures: int = 0
    examples: list[str] = field(default_factory=list)

    def fail(self, example: str) -> None:
        self.failures += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(example)


@dataclass
class QueueState:
    """What RabbitMQ holds at the end: tasks still queued, and the task ids in the dead-letter queues."""

    left: int = 0
    dead_lettered: list[str] = field(default_factory=list)


@dataclass
class Audit:
    """The end state, counted; `problems` names every end condition that does not hold."""

    checks: dict[str, Check] = field(default_factory=lambda: {name: Check(name) for name in CHECKS})
    images: int = 0
    pairs: int = 0
    answers: int = 0
    final: dict[str, int] = field(default_factory=dict)  # latest answer per pair, by status
    failure_kinds: dict[str, int] = field(default_factory=dict)  # final errors and timeouts, by the client's kind
    boxes: int = 0
    jobs: int = 0
    retries: int = 0
    lease_expiries: int = 0
    dead_lettered: int = 0
    backfill: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return [name for name, check in self.checks.items() if check.failures]

    @property
    def problems(self) -> list[str]:
        return [f"{name}: {self.checks[name].failures} ({'; '.join(self.checks[name].examples)})"
                for name in self.failed]


def final_backfill(conn: psycopg.Connection) -> dict[str, int]:
    """Run the backfill over the whole collection; what it queued, per queue (nothing, when all is well). It walks
    the images a page at a time from where it last stopped: one page as large as the collection reaches the end,
    a second one the images before its starting point (whatever the first queued is waiting by then, so it is not
    queued twice)."""
    images = max(len(conn.execute(query("chaos_images")).fetchall()), 1)
    queued: dict[str, int] = {}
    for _ in range(2):
        for queue, count in run_backfill(conn, limit=20 * images, page=images).items():
            queued[queue] = queued.get(queue, 0) + count
    return queued


def queue_state(amqp_url: str, queues: Sequence[str]) -> QueueState:
    """Tasks ready in `queues`, and the ids of the tasks in their dead-letter queues (looked at, left there)."""
    state = QueueState()
    connection = BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        for queue in queues:
            ready, channel = queue_depth(channel, queue)
            state.left += ready or 0  # never declared (tasks via the job table): nothing there
            dead, channel = queue_depth(channel, dead_letter_queue(queue))
            if not dead:
                continue
            while (message := channel.basic_get(dead_letter_queue(queue), auto_ack=False))[0] is not None:
                state.dead_lettered.append(str(message[1].message_id))
            channel.close()  # unacknowledged, every dead letter goes back where it was
            channel = connection.channel()
    finally:
        connection.close()
    return state


def audit(conn: psycopg.Connection, catalog: Catalog, harmony: HarmonyConfig, *,
          backfill: dict[str, int] | None = None, queues: QueueState | None = None) -> Audit:
    """Check the end state of a run against every end condition. `backfill`: what the final backfill queued
    (final_backfill); `queues`: what RabbitMQ holds (queue_state), when tasks went through it."""
    found = Audit(backfill=dict(backfill or {}))
    services = [service.name for service in catalog.select(PRIMARY)]
    images = [row[0] for row in conn.execute(query("chaos_images"))]
    found.images, found.pairs = len(images), len(images) * len(services)
    found.answers = fetch_value(conn, "chaos_answer_rows", {"services": services})
    for image_id, service, problem in conn.execute(query("chaos_answer_problems"), {"services": services}):
        found.checks[ANSWERS].fail(f"image {image_id} {service}: {problem}")
    for status, kind, count in conn.execute(query("chaos_final_answers"), {"services": services}):
        found.final[status] = found.final.get(status, 0) + count
        if status != "success":
            found.failure_kinds[kind or "?"] = found.failure_kinds.get(kind or "?", 0) + count

    service_types = {service.name: service.service_type for service in catalog.services}
    for image_id in images:
        found.boxes += _check_boxes(conn, image_id, harmony, found.checks[BOXES])
        _check_consensus(conn, image_id, service_types, found.checks[CONSENSUS])
    for image_id, merged_id, service, problem in conn.execute(query("chaos_postprocessing_problems")):
        found.checks[POSTPROCESSING].fail(f"image {image_id} box {merged_id} {service}: {problem}")
    sources = [service.name for service in catalog.services if service.enable_caption_scoring]
    for image_id, source, problem in conn.execute(query("chaos_caption_problems"), {"sources": sources}):
        found.checks[CAPTION_SCORES].fail(f"image {image_id} {source}: {problem}")

    for queue, count in found.backfill.items():
        found.checks[BACKFILL].fail(f"{count} {queue} jobs")
    running, waiting, dead, found.jobs, found.retries, found.lease_expiries = fetch_row(conn, "chaos_job_counts")
    if running or waiting or dead:
        for job_id, queue, image_id, state, reason in conn.execute(query("chaos_unfinished_jobs"), {"limit": 3}):
            found.checks[JOBS].fail(f"job {job_id} {queue} (image {image_id}) {state}" + (f": {reason}" * bool(reason)))
        found.checks[JOBS].failures = running + waiting + dead
    for what, image_id, service, reason in conn.execute(query("chaos_outage_failures")):
        found.checks[SERVICES_DOWN].fail(f"image {image_id} {service} {what}: {reason}")
    for image_id, service, task_id in conn.execute(query("chaos_tasks_in_flight")):
        found.checks[QUEUES].fail(f"image {image_id} {service}: task {task_id} still in the ledger of tasks in flight")
    if queues is not None:
        _check_queues(conn, queues, found)
    return found


def box_difference(conn: psycopg.Connection, image_id: int, harmony: HarmonyConfig) -> tuple[int, str | None]:
    """How many boxes the image stores, and how they differ from a fresh harmonization of its latest detector
    answers (every field, the answer ids each box names, and those the merge record names); None: they do not."""
    rows = conn.execute(query("latest_detector_results"), {"image_id": image_id}).fetchall()
    recomputed = harmonize([DetectorResult(*row) for row in rows], harmony)
    wanted = {crop_key(box): (as_stored(box.to_merged_data()), sorted(box.source_result_ids)) for box in recomputed}
    stored = {key: (data, sorted(ids)) for key, data, ids in conn.execute(query("chaos_image_boxes"),
                                                                           {"image_id": image_id})}
    record = conn.execute(query("chaos_merge_record"), {"image_id": image_id}).fetchone()
    inputs = sorted(row[0] for row in rows)
    if stored != wanted:
        differing = sorted(key for key in set(stored) | set(wanted) if stored.get(key) != wanted.get(key))
        return len(stored), (f"{len(stored)} boxes stored, {len(wanted)} recomputed, "
                             f"differing: {', '.join(differing[:3])}")
    # An image no detector answered with success needs no merge (the backfill's rule, sql/0115): no record is right.
    if (record is None and inputs) or (record is not None and sorted(record[0]) != inputs):
        return len(stored), f"the merge record names answers {record and sorted(record[0])}, the latest are {inputs}"
    return len(stored), None


def _check_boxes(conn: psycopg.Connection, image_id: int, harmony: HarmonyConfig, check: Check) -> int:
    boxes, difference = box_difference(conn, image_id, harmony)
    if difference is not None:
        check.fail(f"image {image_id}: {difference}")
    return boxes


def _check_consensus(conn: psycopg.Connection, image_id: int, service_types: dict[str, Any], check: Check) -> None:
    row = conn.execute(query("chaos_consensus"), {"image_id": image_id}).fetchone()
    if row is None:
        check.fail(f"image {image_id}: no consensus")
        return
    fresh = as_stored(consensus_for_image(conn, image_id, service_types))
    if row[0] != fresh:
        keys = sorted(key for key in set(row[0]) | set(fresh) if row[0].get(key) != fresh.get(key))
        check.fail(f"image {image_id}: {', '.join(keys)} differ from a fresh vote")


def _check_queues(conn: psycopg.Connection, queues: QueueState, found: Audit) -> None:
    check = found.checks[QUEUES]
    found.dead_lettered = len(queues.dead_lettered)
    if queues.left:
        check.fail(f"{queues.left} tasks still queued")
    stored: dict[str, Any] = dict(conn.execute(query("chaos_task_rows"), {"task_ids": queues.dead_lettered}).fetchall())
    for task_id in queues.dead_lettered:
        if task_id not in stored:
            check.fail(f"dead-lettered task {task_id} has no answer row")
