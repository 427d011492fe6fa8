"""The consensus role: recompute an image's V3 vote from its latest rows and replace its consensus row,
serialised per image so that the last recompute always sees every answer committed before it. The row records
what the vote read (the answers, the box set's revision, the face/pose rows), so the backfill can tell a stale
consensus by content. A vote waits while the image has voter tasks without a final row, up to its deadline job
(sql/0104), so that an image whose answers arrive minutes apart is voted on about once, not once per answer. The
triggers already queue no vote while such a task is outstanding (sql/0105); the vote's own check is the safety net
for tasks added after a vote was queued (a resubmit)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from windmill.db.pipelined import pipelined_transaction
from windmill.db.queries import fetch_value, query
from windmill.jobs import Job
from windmill.jobs.queues import CONSENSUS_QUEUE
from windmill.locks import Product
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


@dataclass(frozen=True)
class ImageVoteState:
    """What one vote reads, in one statement after the image's lock: the inputs, what the stored consensus records
    having read (None without a consensus), whether this job's vote waits for the image's voter tasks and whether
    the image's deadline job is queued (sql/0104)."""

    inputs: ConsensusInputs
    stored: dict[str, Any] | None
    waits_for_voters: bool
    deadline_queued: bool

    def current(self) -> bool:
        """Does the stored consensus record the very rows a vote would read now? The same rule as the backfill's
        staleness (stale_products, sql/0014), in Python for the vote; tests/test_consensus_waits.py
        test_the_vote_and_the_backfill_agree_on_what_is_current pins the two together."""
        return self.stored == self.inputs.recorded()


def read_state(conn: psycopg.Connection, image_id: int, job_payload: Mapping[str, Any] | None = None, *,
               lock: bool = False) -> ImageVoteState:
    """`lock`: first take the image's consensus lock (held to the transaction's end), then read, in one call whose
    read sees what the lock's previous holder committed (sql/0109)."""
    results: list[ServiceResult] = []
    boxes: list[MergedBoxRow] = []
    post: list[PostprocessingRow] = []
    revision, stored, waits, deadline = 0, None, False, False
    params = {"image_id": image_id, "payload": None if job_payload is None else Jsonb(job_payload)}
    if lock:
        rows = conn.execute(query("lock_and_read_consensus_inputs"),
                            {**params, "lock_namespace": int(Product.CONSENSUS)})
    else:
        rows = conn.execute(query("consensus_inputs"), params)
    for (kind, row_id, service, status, data, processing_time, created, merged_box_id,
         source_result_ids, boxes_revision, postprocessing_ids, waits_for_voters, deadline_queued) in rows:
        if kind == "answer":
            results.append(ServiceResult(row_id, service, status, data, processing_time, created))
        elif kind == "box":
            boxes.append(MergedBoxRow(row_id, data))
        elif kind == "face_pose":
            post.append(PostprocessingRow(row_id, merged_box_id, service, status, data))
        else:  # the one 'image' row
            revision, waits, deadline = row_id, waits_for_voters, deadline_queued
            if boxes_revision is not None:
                stored = {"source_result_ids": source_result_ids, "boxes_revision": boxes_revision,
                          "postprocessing_ids": postprocessing_ids}
    return ImageVoteState(ConsensusInputs(results, boxes, post, revision), stored, waits, deadline)


def consensus_for_image(conn: psycopg.Connection, image_id: int,
                        service_types: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The consensus of the image's current rows (pure vote over what the database holds now)."""
    return vote(read_state(conn, image_id).inputs, service_types)


def vote(inputs: ConsensusInputs, service_types: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    return compute_consensus(inputs.results, inputs.boxes, inputs.postprocessing, service_types=service_types)


def recompute_consensus(conn: psycopg.Connection, image_id: int, service_types: Mapping[str, Sequence[str]],
                        worker_id: str, job_payload: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """Vote again and store the result; None when nothing is stored:
    - the stored consensus already records the very rows the vote would read now (a vote over the same rows gives
      the same consensus; box changes, colors and caption scores queue votes that often find nothing changed);
    - or a voter task of the image has no final row yet and the job is not the image's deadline job (sql/0104
      decides from `job_payload`, the consensus job's payload; None counts as a normal job): the vote is put off
      onto that task's final row, which queues the next vote, and the deadline job bounds the wait.
    A vote not put off drops the image's queued deadline job: it read everything the put-off votes waited for.
    Two round trips (windmill/db/pipelined.py): BEGIN with the lock and the read, the write (if any) with COMMIT."""
    with pipelined_transaction(conn):
        started = time.perf_counter()
        # The lock, then the read on a snapshot of its own, which sees what the vote that held the lock committed.
        state = read_state(conn, image_id, job_payload, lock=True)
        current = state.current()
        if not current and state.waits_for_voters:
            conn.execute(query("enqueue_consensus_deadline"), {"image_id": image_id})
            return None
        # A vote not put off reads all that the put-off ones waited for: the deadline job goes, with the store when
        # there is one (sql/0112).
        if current:
            if state.deadline_queued:
                conn.execute(query("drop_consensus_deadline"), {"image_id": image_id})
            return None
        data = vote(state.inputs, service_types)
        conn.execute(query("store_vote"), {"image_id": image_id, "consensus_data": Jsonb(data),
                                           "processing_time": time.perf_counter() - started, "worker_id": worker_id,
                                           "drop_deadline": state.deadline_queued, **state.inputs.recorded()})
    return data


@register_role("consensus", "recomputes an image's V3 consensus from its latest answers (queue consensus)")
def consensus_role(context: RoleContext) -> Role:
    service_types = {service.name: service.service_type for service in context.catalog.services}

    def handle(job: Job) -> None:
        image_id = job.about_image
        with context.pool.connection() as conn:
            recompute_consensus(conn, image_id, service_types, context.worker_id, job.payload)

    with context.pool.connection() as conn:
        delay_s = float(fetch_value(conn, "consensus_delay_s"))
    # The votes queued within half the debounce share one claim: a vote waits at most that much longer, and a busy
    # pipeline's consensus worker claims a few times a second rather than at every image (sql/0118).
    return Role(name="consensus", queues=(CONSENSUS_QUEUE,), handle=handle, claim_delay_s=delay_s,
                claim_together_s=delay_s / 2)
