"""The postprocess roles: crop an image's merged boxes in memory and send them to colors, face or pose, a job per
image and service (sql/0115); store each answer with face boxes, keypoints and pose landmarks translated from the
crop to the whole image."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from windmill.db.queries import query
from windmill.errors import WindmillError
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
        predictions = [face_prediction_to_image(p, crop) for p in data.get("predictions", [])]
    elif service == "pose":
        predictions = [pose_prediction_to_image(p, crop, image_size) for p in data.get("predictions", [])]
    else:
        return {**data, "crop": crop.as_bbox()}
    return {**data, "predictions": predictions, "crop": crop.as_bbox(), "raw": data}


class PostprocessHandler:
    def __init__(self, context: RoleContext, farm: FarmClient, images: ImageSource) -> None:
        self.context = context
        self.farm = farm
        self.images = images
        self.writes = HandOffWriter(context.jobs)

    def handle(self, job: Job, service: str, handoff: Handoff | None = None) -> list[str]:
        """Sends the job's image's boxes that are still to see `service` to it, one after the other, each answer
        stored as it comes (sql/0115: a job per image and service); returns the statuses stored.

        A passing failure (the service, the image's download) or the database away is raised at once, the boxes
        before it stored, so the retry starts at its box. Anything else is that box's alone: the image's other boxes
        go on, and the job is retried for it afterwards; on the final attempt it is the box's row (kind `worker`),
        as a service task's is. `handoff`: the job's, to complete with its last box's row (windmill.jobs.handoff)
        when every box before it was stored."""
        image_id = job.image_id if job.image_id is not None else int(job.payload["image_id"])
        only_box = job.payload.get("merged_box_id")  # a job queued per box by an earlier release
        with self.context.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            boxes = cursor.execute(query("boxes_to_postprocess"), {
                "image_id": image_id, "merged_box_id": None if only_box is None else int(only_box),
                "service": service}).fetchall()
        if not boxes:
            log.debug("image %d: no box left for %s", image_id, service, extra={"action": "postprocess_skipped"})
        final_attempt = job.attempts >= job.max_attempts
        stored: list[str] = []
        broken: Exception | None = None  # the first box that failed otherwise, raised once the others are done
        for index, box in enumerate(boxes):
            last = handoff if index == len(boxes) - 1 and broken is None else None
            try:
                status = self._postprocess(box, service, final_attempt, last)
            except (ServiceCallError, ImageUnavailable, psycopg.Error):
                raise  # passing (call_service raises only those) or the database's: the retry starts at this box
            except Exception as error:
                if not final_attempt:
                    broken = broken or error
                    continue
                failure = Failure.of(error)
                status = self._store(box, service, failure.status, failure.data(), error_message=failure.error_message,
                                     handoff=last)
            if status is not None:
                stored.append(status)
        if broken is not None:
            raise broken
        return stored

    def _postprocess(self, box: dict[str, Any], service: str, final_attempt: bool, handoff: Handoff | None
                     ) -> str | None:
        """One box: crop it, call the service, store the row; None when the box was replaced meanwhile."""

        def call() -> tuple[ServiceAnswer, CropBox, tuple[int, int]]:
            # The crop is shared with the box's other postprocessing services (a person box: colors, face, pose), and
            # the image's other boxes are cut with it, from the same pixels: colors asks for them much later. (With
            # several postprocess processes, some of those crops are cut where no job asks for them: 0.2 ms each,
            # where the image's second decode would cost about 1 ms.)
            crop = self.images.crop(box["image_id"], box["image_path"], box["image_url"],
                                    box["merged_data"]["merged_bbox"],
                                    other_boxes=lambda: self._boxes_to_crop(box["image_id"]))
            return self.farm.analyze(service, crop.image), crop.box, crop.image_size

        called = call_service(call, final_attempt=final_attempt)
        if isinstance(called, Failure):
            return self._store(box, service, called.status, called.data(), error_message=called.error_message,
                               processing_time=called.processing_time, handoff=handoff)
        answer, crop, image_size = called
        data = to_image_coordinates(service, answer.data, crop, image_size)
        status = "success" if data.get("predictions") else "empty"
        return self._store(box, service, status, data, processing_time=answer.processing_time, handoff=handoff)

    def _boxes_to_crop(self, image_id: int) -> list[Any]:
        with self.context.pool.connection() as conn:
            return [row[0] for row in conn.execute(query("image_boxes_to_crop"), {"image_id": image_id})]

    def _store(self, box: dict[str, Any], service: str, status: str, data: dict[str, Any], *,
               error_message: str | None = None, processing_time: float = 0.0, handoff: Handoff | None = None
               ) -> str | None:
        params = {"image_id": box["image_id"], "merged_box_id": box["merged_id"], "service": service,
                  "data": Jsonb(data), "status": status, "error_message": error_message,
                  "processing_time": processing_time, "worker_id": self.context.worker_id}
        try:
            self.writes.write(lambda conn: conn.execute(query("insert_postprocessing"), params), handoff)
        except psycopg.errors.ForeignKeyViolation:
            # The box was replaced while its crop was analysed: the answer belongs to no box any more.
            log.info("box %d was replaced during %s; answer dropped", box["merged_id"], service,
                     extra={"action": "postprocess_orphan_dropped"})
            return None
        return status


@register_role("postprocess", "sends merged boxes, cropped, to colors, face and pose "
               "(--service: some of them; queues postprocess_<service>)")
def postprocess_role(context: RoleContext) -> Role:
    selection = context.service or ",".join(POSTPROCESS_QUEUES)
    services = [name.strip() for name in selection.split(",") if name.strip()]
    unknown = [name for name in services if name not in POSTPROCESS_QUEUES]
    if unknown:
        raise WindmillError(
            f"unknown postprocess service {', '.join(unknown)}; valid: {', '.join(POSTPROCESS_QUEUES)}")
    handler = PostprocessHandler(context, context.farm, context.images)
    by_queue = {POSTPROCESS_QUEUES[service]: service for service in services}

    def handle(job: Job, handoff: Handoff | None = None) -> None:
        handler.handle(job, by_queue[job.queue], handoff)

    return Role(name="postprocess", queues=tuple(by_queue), handle=handle, hand_off=handle,
                close=handler.writes.close, service=",".join(services),
                service_queues={queue: context.farm.limits.limit(service) for queue, service in by_queue.items()})
