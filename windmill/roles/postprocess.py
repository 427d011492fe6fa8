"""The postprocess roles: crop an image's merged boxes in memory and send them to colors, face or pose, a job per
image and service (sql/0115); store the job's answers together, in one transaction, with face boxes, keypoints and
pose landmarks translated from the crop to the whole image."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from windmill.db.queries import query
from windmill.errors import PoisonInput, WindmillError, first_line
from windmill.farm import FarmClient, ServiceAnswer, ServiceCallError
from windmill.image_cache import ImageSource
from windmill.images import CropBox, ImageUnavailable, face_prediction_to_image, pose_prediction_to_image
from windmill.jobs import Job
from windmill.jobs.handoff import Handoff
from windmill.jobs.queue import HandOffWriter
from windmill.jobs.queues import POSTPROCESS_QUEUES
from windmill.roles.outcome import Failure, call_service
from windmill.roles.registry import Role, RoleContext, register_role

log = logging.getLogger(__name__)


def to_image_coordinates(service: str, data: dict[str, Any], crop: CropBox, image_size: tuple[int, int]
                         ) -> dict[str, Any]:
    """The answer with predictions in full-image coordinates; the crop's own answer kept under `raw`."""
    if service == "face":
        predictions = [face_prediction_to_image(p, crop, image_size) for p in data.get("predictions", [])]
    elif service == "pose":
        predictions = [pose_prediction_to_image(p, crop, image_size) for p in data.get("predictions", [])]
    else:
        return {**data, "crop": crop.as_bbox()}
    return {**data, "predictions": predictions, "crop": crop.as_bbox(), "raw": data}


@dataclass(frozen=True)
class BoxRow:
    """A box's postprocessing row, to store: the service's answer, or the failure recorded."""

    box: dict[str, Any]  # boxes_to_postprocess's row
    status: str
    data: dict[str, Any]
    error_message: str | None = None
    processing_time: float = 0.0


class PostprocessHandler:
    def __init__(self, context: RoleContext, farm: FarmClient, images: ImageSource) -> None:
        self.context = context
        self.farm = farm
        self.images = images
        self.writes = HandOffWriter(context.jobs)

    def handle(self, job: Job, service: str, handoff: Handoff | None = None) -> list[str]:
        """Sends the job's image's boxes that are still to see `service` to it, one after the other, and stores
        their rows together, in one transaction (sql/0115: a job per image and service); returns the statuses
        stored.

        A passing failure (the service, the image's download) is raised once the rows of the boxes before it are
        stored, so the retry starts at its box; the database away is raised at once. Anything else is that box's
        alone: the image's other boxes go on, and the job is retried for it afterwards; on the final attempt it is
        the box's row (kind `worker`), as a service task's is. `handoff`: the job's, to complete with the rows
        (windmill.jobs.handoff) when no box failed."""
        image_id, boxes = self._boxes(job, service)
        if not boxes:
            log.debug("image %d: no box left for %s", image_id, service, extra={"action": "postprocess_skipped"})
        final_attempt = job.attempts >= job.max_attempts
        rows: list[BoxRow] = []
        broken: Exception | None = None  # the first box that failed otherwise, raised once the others are done
        for box in boxes:
            try:
                rows.append(self._postprocess(box, service, final_attempt, retried=job.attempts > 1))
            except psycopg.Error:
                raise  # the database's: the rows before it would not be stored either
            except (ServiceCallError, ImageUnavailable):
                # Passing (call_service raises only those): the retry starts at this box.
                self._keep_before_raising(rows, image_id, service)
                raise
            except Exception as error:
                if not final_attempt:
                    broken = broken or error
                    continue
                failure = Failure.of(error)
                rows.append(BoxRow(box, failure.status, failure.data(), failure.error_message))
        stored = self._store(rows, image_id, service, handoff if broken is None else None)
        if broken is not None:
            raise broken
        return stored

    def record_poison(self, job: Job, service: str, poison: PoisonInput, handoff: Handoff | None = None) -> list[str]:
        """A job whose workers died on it (Job.poison): each of its boxes still to see `service` gets its error row,
        without a crop or a call; returns the statuses stored."""
        image_id, boxes = self._boxes(job, service)
        failure = Failure.of(poison)
        return self._store([BoxRow(box, failure.status, failure.data(), failure.error_message) for box in boxes],
                           image_id, service, handoff)

    def _boxes(self, job: Job, service: str) -> tuple[int, list[dict[str, Any]]]:
        """The job's image, and its boxes still to see `service`."""
        image_id = job.image_id if job.image_id is not None else int(job.payload["image_id"])
        only_box = job.payload.get("merged_box_id")  # a job queued per box by an earlier release
        with self.context.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            return image_id, cursor.execute(query("boxes_to_postprocess"), {
                "image_id": image_id, "merged_box_id": None if only_box is None else int(only_box),
                "service": service}).fetchall()

    def _postprocess(self, box: dict[str, Any], service: str, final_attempt: bool, *, retried: bool) -> BoxRow:
        """One box: crop it and call the service; its row, to store."""

        def call() -> tuple[ServiceAnswer, CropBox, tuple[int, int]]:
            # The crop is shared with the box's other postprocessing services (a person box: colors, face, pose), and
            # the image's other boxes are cut with it, from the same pixels: colors asks for them much later. (With
            # several postprocess processes, some of those crops are cut where no job asks for them: 0.2 ms each,
            # where the image's second decode would cost about 1 ms.)
            crop = self.images.crop(box["image_id"], box["image_path"], box["image_url"],
                                    box["merged_data"]["merged_bbox"],
                                    other_boxes=lambda: self._boxes_to_crop(box["image_id"]))
            # Boxes are clamped once in image coordinates (to_image_coordinates), not to the crop first.
            return self.farm.analyze(service, crop.image, clamp_to_image=False), crop.box, crop.image_size

        # A crop is pixels Windmill decoded and encoded itself: a service that cannot decode it on a retry never will.
        called = call_service(call, final_attempt=final_attempt, retrying_own_pixels=retried)
        if isinstance(called, Failure):
            return BoxRow(box, called.status, called.data(), called.error_message, called.processing_time)
        answer, crop, image_size = called
        data = to_image_coordinates(service, answer.data, crop, image_size)
        return BoxRow(box, "success" if data.get("predictions") else "empty", data, None, answer.processing_time)

    def _boxes_to_crop(self, image_id: int) -> list[Any]:
        with self.context.pool.connection() as conn:
            return [row[0] for row in conn.execute(query("image_boxes_to_crop"), {"image_id": image_id})]

    def _keep_before_raising(self, rows: list[BoxRow], image_id: int, service: str) -> None:
        """The rows of the boxes answered before a passing failure, stored if the database lets us: otherwise the
        retry asks for them again."""
        try:
            self._store(rows, image_id, service, None)
        except psycopg.Error as error:
            log.warning("image %d: %d %s answers not stored before the retry (%s)", image_id, len(rows), service,
                        first_line(error), extra={"action": "postprocess_rows_lost"})

    def _store(self, rows: list[BoxRow], image_id: int, service: str, handoff: Handoff | None) -> list[str]:
        """The rows in one statement (with the handoff's completion and claim, when given); the statuses of those
        written. A box replaced while it was analysed gets no row: its answer belongs to no box any more."""
        if not rows:
            return []
        params = self._rows_parameters(rows, image_id, service)
        try:
            written = {merged_id for merged_id, in self.writes.write(
                lambda conn: conn.execute(query("insert_postprocessing_rows"), params), handoff)}
        except psycopg.errors.ForeignKeyViolation:
            # A merge deleted a box after the statement looked (its header): one at a time, that box's row dropped.
            return [status for row in rows if (status := self._store_one(row, image_id, service)) is not None]
        for row in rows:
            if row.box["merged_id"] not in written:
                log.info("box %d was replaced during %s (or had its row already); answer dropped",
                         row.box["merged_id"], service, extra={"action": "postprocess_orphan_dropped"})
        return [row.status for row in rows if row.box["merged_id"] in written]

    def _store_one(self, row: BoxRow, image_id: int, service: str) -> str | None:
        params = self._rows_parameters([row], image_id, service)
        try:
            written = self.writes.write(lambda conn: conn.execute(query("insert_postprocessing_rows"), params), None)
        except psycopg.errors.ForeignKeyViolation:
            written = []
        if not written:
            log.info("box %d was replaced during %s (or had its row already); answer dropped", row.box["merged_id"],
                     service, extra={"action": "postprocess_orphan_dropped"})
            return None
        return row.status

    def _rows_parameters(self, rows: list[BoxRow], image_id: int, service: str) -> dict[str, Any]:
        """insert_postprocessing_rows' parameters: a field of every row per array."""
        return {"image_id": image_id, "service": service, "worker_id": self.context.worker_id,
                "merged_box_ids": [row.box["merged_id"] for row in rows],
                "data": [Jsonb(row.data) for row in rows], "statuses": [row.status for row in rows],
                "error_messages": [row.error_message for row in rows],
                "processing_times": [row.processing_time for row in rows]}


def postprocess_services(selection: str) -> list[str]:
    """The postprocessing services a --service selection names; one that is none of them is refused."""
    services = [name.strip() for name in selection.split(",") if name.strip()]
    unknown = [name for name in services if name not in POSTPROCESS_QUEUES]
    if unknown:
        raise WindmillError(
            f"unknown postprocess service {', '.join(unknown)}; valid: {', '.join(POSTPROCESS_QUEUES)}")
    return services


@register_role("postprocess", "sends merged boxes, cropped, to colors, face and pose "
               "(--service: some of them; queues postprocess_<service>)", takes_service=True,
               check_service=postprocess_services)
def postprocess_role(context: RoleContext) -> Role:
    services = postprocess_services(context.service or ",".join(POSTPROCESS_QUEUES))
    handler = PostprocessHandler(context, context.farm, context.images)
    by_queue = {POSTPROCESS_QUEUES[service]: service for service in services}

    def handle(job: Job, handoff: Handoff | None = None) -> None:
        handler.handle(job, by_queue[job.queue], handoff)

    def record_poison(job: Job, poison: PoisonInput, handoff: Handoff | None) -> None:
        handler.record_poison(job, by_queue[job.queue], poison, handoff)

    return Role(name="postprocess", queues=tuple(by_queue), handle=handle, hand_off=handle, record_poison=record_poison,
                close=handler.writes.close, service=",".join(services),
                service_queues={queue: context.farm.limits.limit(service) for queue, service in by_queue.items()})
