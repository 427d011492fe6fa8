"""The caption_score role: score the latest caption of a caption source (blip, ollama) against its image with
the caption score service, keeping one `caption_score_<source>` row per image and source: the score of the
source's newest caption (a score of an older caption that finishes later is not stored)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb

from windmill.db.queries import query
from windmill.errors import PoisonInput, WindmillError
from windmill.farm import FarmClient, ServiceAnswer
from windmill.image_cache import ImageSource
from windmill.jobs import Job
from windmill.jobs.handoff import Handoff
from windmill.jobs.queue import HandOffWriter
from windmill.jobs.queues import CAPTION_SCORE_QUEUE
from windmill.locks import Product
from windmill.roles.outcome import Failure, call_service
from windmill.roles.registry import Role, RoleContext, register_role

SCORING_SERVICE = "caption_score"


def _first_prediction(data: Any) -> dict[str, Any]:
    """A BLIP/Ollama answer's one prediction ({} when it has none)."""
    predictions = data.get("predictions") if isinstance(data, dict) else None
    return predictions[0] if predictions and isinstance(predictions[0], dict) else {}


def caption_of(data: Any) -> str:
    """The caption text of a BLIP/Ollama answer ('' when there is none)."""
    return str(_first_prediction(data).get("text") or "").strip()


def reference_shape(source: str, caption: str, caption_data: Any, answer: dict[str, Any]) -> dict[str, Any]:
    """The keys the first Windmill stored a score under (spec/reference-behaviour.md §9), kept beside ours so that
    what read its rows reads ours: the `caption_score` object, `processing_algorithm`, `processed_at`."""
    scored_at = datetime.now(UTC).isoformat()
    return {"caption_score": {"service": source, "caption": caption,
                              "original_confidence": _first_prediction(caption_data).get("confidence") or 1.0,
                              "similarity_score": answer.get("similarity_score"), "scored_at": scored_at},
            "processing_algorithm": "clip_similarity_v1", "processed_at": scored_at}


@dataclass(frozen=True)
class CaptionScore:
    """A scored (or failed) caption, not stored yet."""

    image_id: int
    source: str  # the caption service: blip, ollama
    source_result_id: int  # the caption's results row
    status: str
    data: dict[str, Any]
    error_message: str | None = None
    processing_time: float = 0.0


class CaptionScorer:
    def __init__(self, context: RoleContext, farm: FarmClient, images: ImageSource) -> None:
        self.context = context
        self.farm = farm
        self.images = images
        self.writes = HandOffWriter(context.jobs)

    def handle(self, job: Job, handoff: Handoff | None = None) -> str | None:
        """The stored status; None when there was nothing to score or the caption was superseded meanwhile.
        `handoff`: the job's, to complete with the score's write (windmill.jobs.handoff)."""
        scored = self.score(job.about_image, str(job.payload["service"]),
                            final_attempt=job.attempts >= job.max_attempts)
        return None if scored is None else self.store(scored, handoff)

    def score(self, image_id: int, source: str, *, final_attempt: bool = True) -> CaptionScore | None:
        """Score the source's latest caption of the image; None when the image is gone or the source never
        succeeded. A passing failure before the final attempt is raised (the job is retried): roles/outcome.py."""
        latest = self._latest_caption(image_id, source)
        if latest is None:
            return None
        result_id, data, image_path, image_url = latest
        caption = caption_of(data)
        record = self._record(source, result_id, caption)

        def call() -> ServiceAnswer:
            # The CLIP of df57b25 takes no upload on /score (spec §3.4): the shipped catalog gives it the file. The
            # caption is a service's answer on this image: its pixels were decoded when it was sent for it.
            image, path = self.images.inputs_for(self.farm.catalog[SCORING_SERVICE], image_id, image_path, image_url,
                                                 decoded_before=True)
            return self.farm.score_answer(SCORING_SERVICE, image, caption, image_url=image_url, image_path=path)

        answer = call_service(call, final_attempt=final_attempt)
        if isinstance(answer, Failure):
            return CaptionScore(image_id, source, result_id, answer.status, {**record, **answer.data()},
                                answer.error_message, answer.processing_time)
        return CaptionScore(image_id, source, result_id, "success",
                            {**record, **answer.data, **reference_shape(source, caption, data, answer.data)}, None,
                            answer.processing_time)

    def record_poison(self, job: Job, poison: PoisonInput, handoff: Handoff | None = None) -> str | None:
        """A job whose workers died on it (Job.poison): the latest caption's score is its error row, without reading
        the image or calling the scorer; None when there is no caption to score (or it was superseded)."""
        image_id, source = job.about_image, str(job.payload["service"])
        latest = self._latest_caption(image_id, source)
        if latest is None:
            return None
        result_id, data = latest[0], latest[1]
        failure = Failure.of(poison)
        return self.store(CaptionScore(image_id, source, result_id, failure.status,
                                       {**self._record(source, result_id, caption_of(data)), **failure.data()},
                                       failure.error_message), handoff)

    def _latest_caption(self, image_id: int, source: str) -> tuple[Any, ...] | None:
        """The source's latest caption of the image: its result id, data, the image's path and URL (None: none)."""
        with self.context.pool.connection() as conn:
            row = conn.execute(query("latest_caption"), {"image_id": image_id, "service": source}).fetchone()
        return None if row is None else tuple(row)

    @staticmethod
    def _record(source: str, result_id: int, caption: str) -> dict[str, Any]:
        """What a score keeps of the caption it scored, beside the answer or the error."""
        return {"caption": caption, "caption_service": source, "source_result_id": result_id}

    def store(self, scored: CaptionScore, handoff: Handoff | None = None) -> str | None:
        """Replace the image's score of this source, if the scored caption is still the source's latest (under the
        image's caption-score lock); returns the stored status, or None when a newer caption superseded it (that
        caption's own job scores it). One call, its own transaction (sql/0107), with the job's hand-off if any."""
        params = {
            "image_id": scored.image_id, "lock_namespace": int(Product.CAPTION_SCORE), "source": scored.source,
            "service": f"caption_score_{scored.source}", "source_result_id": scored.source_result_id,
            "data": Jsonb(scored.data), "status": scored.status, "error_message": scored.error_message,
            "processing_time": scored.processing_time, "worker_id": self.context.worker_id}
        [(stored,)] = self.writes.write(lambda conn: conn.execute(query("store_caption_score"), params), handoff)
        return scored.status if stored else None


@register_role("caption_score", "scores the latest BLIP/Ollama caption of an image with the "
               "caption_score service (queue caption_score)")
def caption_score_role(context: RoleContext) -> Role:
    if SCORING_SERVICE not in context.catalog:
        raise WindmillError(f"the catalog has no {SCORING_SERVICE} service")
    scorer = CaptionScorer(context, context.farm, context.images)
    return Role(name="caption_score", queues=(CAPTION_SCORE_QUEUE,), handle=scorer.handle, hand_off=scorer.handle,
                record_poison=scorer.record_poison, close=scorer.writes.close,
                service_queues={CAPTION_SCORE_QUEUE: context.farm.limits.limit(SCORING_SERVICE)})
