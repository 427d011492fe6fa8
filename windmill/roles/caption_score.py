"""The caption_score role: score the latest caption of a caption source (blip, ollama) against its image with
the caption score service, keeping one `caption_score_<source>` row per image and source."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from windmill.db.queries import query
from windmill.errors import WindmillError
from windmill.farm import FarmClient, ServiceCallError
from windmill.image_cache import ImageSource
from windmill.images import BadImage, ImageUnavailable
from windmill.jobs import Job
from windmill.locks import Product, lock_image
from windmill.worker.registry import Role, RoleContext, register_role

CAPTION_SCORE_QUEUE = "caption_score"
SCORING_SERVICE = "caption_score"


def caption_of(data: Any) -> str:
    """The caption text of a BLIP/Ollama answer ('' when there is none)."""
    predictions = data.get("predictions") if isinstance(data, dict) else None
    if predictions and isinstance(predictions[0], dict):
        return str(predictions[0].get("text") or "").strip()
    return ""


class CaptionScorer:
    def __init__(self, context: RoleContext, farm: FarmClient, images: ImageSource) -> None:
        self.context = context
        self.farm = farm
        self.images = images

    def handle(self, job: Job) -> str | None:
        image_id, source = int(job.payload["image_id"]), str(job.payload["service"])
        with self.context.pool.connection() as conn:
            row = conn.execute(query("latest_caption"), {"image_id": image_id, "service": source}).fetchone()
        if row is None:
            return None  # the image is gone, or the caption source never succeeded
        result_id, data, image_path, image_url = row
        caption = caption_of(data)
        record: dict[str, Any] = {"caption": caption, "caption_service": source, "source_result_id": result_id}
        try:
            image = self.images.prepared(image_id, image_path, image_url)
            answer = self.farm.score_answer(SCORING_SERVICE, image, caption)
        except BadImage as bad:
            return self._store(image_id, source, "error", {**record, "error": str(bad)}, str(bad))
        except ImageUnavailable as unavailable:  # a download that may succeed later: retried
            if job.attempts < job.max_attempts:
                raise
            return self._store(image_id, source, "error", {**record, "error": str(unavailable)}, str(unavailable))
        except ServiceCallError as failure:
            if failure.retryable and job.attempts < job.max_attempts:
                raise
            return self._store(image_id, source, failure.result_status, {**record, "error": failure.reason},
                               failure.message, failure.elapsed or 0.0)
        return self._store(image_id, source, "success", {**record, **answer.data}, None, answer.processing_time)

    def _store(self, image_id: int, source: str, status: str, data: dict[str, Any], error_message: str | None,
               processing_time: float = 0.0) -> str:
        with self.context.pool.connection() as conn, conn.transaction():
            lock_image(conn, Product.CAPTION_SCORE, image_id)
            conn.execute(query("replace_caption_score"), {
                "image_id": image_id, "service": f"caption_score_{source}", "data": Jsonb(data), "status": status,
                "error_message": error_message, "processing_time": processing_time,
                "worker_id": self.context.worker_id})
        return status


@register_role("caption_score")
def caption_score_role(context: RoleContext) -> Role:
    if SCORING_SERVICE not in context.catalog:
        raise WindmillError(f"the catalog has no {SCORING_SERVICE} service")
    scorer = CaptionScorer(context, context.farm, ImageSource(context.settings))
    return Role(name="caption_score", queues=(CAPTION_SCORE_QUEUE,), handle=scorer.handle)
