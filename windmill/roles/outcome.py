"""What a call to an Animal Farm service comes to, for every role that makes one (service tasks, postprocessing
crops, caption scores): the answer, a failure to store as the one error-row shape, or an exception for the queue
to retry.

Retry or record (DESIGN rule 4, every failure is a row):

* a passing failure (a retryable `ServiceCallError`: connect, timeout, network, HTTP 5xx or 429; an
  `ImageUnavailable` download) is raised while attempts remain: the queue retries it with backoff; on the final
  attempt it is recorded;
* the service's answer that it cannot decode an image Windmill encoded itself (a crop), on a retry: recorded, as
  the same pixels will not decode on a third try (`ServiceCallError.refuses_the_upload`, spec §2.7); the one retry
  covers a service that failed for a passing reason and said so in those words;
* a permanent failure (any other `ServiceCallError`; a `BadImage`) is recorded at once: the same input fails again;
* the database unavailable is never caught here: it reaches the queue, which does not count it as an attempt
  (worker/runtime.py, broker/consumer.py), and the row is written once the database is back;
* anything else is a counted attempt; a RabbitMQ task whose last attempt failed so is recorded through
  `Failure.of` as kind `worker`;
* a poison input (`PoisonInput`: its worker died handling it, as many times as the queue allows) is recorded without
  being run again, as kind `worker_died`.

The error row: `status` is `timeout` for a timeout and `error` otherwise, `error_message` the one-line reason (a
service failure names the service), `processing_time` the seconds the failed call took, and `data` holds
`{"error": {"kind": ..., "message": ..., "status_code": ...}}` beside whatever the role records of its input
(a caption score keeps the caption it scored).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from windmill.errors import PoisonInput, first_line
from windmill.farm import ServiceCallError
from windmill.images import BadImage, ImageUnavailable

T = TypeVar("T")

# Failure kinds beside ServiceCallError's (windmill/farm/errors.py).
BAD_IMAGE = "bad_image"
IMAGE_UNAVAILABLE = "image_unavailable"
WORKER = "worker"  # the handler itself failed on the last attempt
WORKER_DIED = "worker_died"  # its worker process died handling it, each time it ran (PoisonInput)


@dataclass(frozen=True)
class Failure:
    """A failure to store as the task's (or box's, or caption's) final row."""

    status: str  # results/postprocessing status: error or timeout
    kind: str  # a ServiceCallError kind, bad_image, image_unavailable, worker or worker_died
    reason: str  # one line, without the service's name
    error_message: str  # the row's error_message column
    status_code: int | None = None  # the service's HTTP status, when it answered
    processing_time: float = 0.0  # seconds the failed call took

    @classmethod
    def of(cls, error: BaseException) -> Failure:
        if isinstance(error, ServiceCallError):
            return cls(error.result_status, error.kind, error.reason, error.message, error.status_code,
                       error.elapsed or 0.0)
        if isinstance(error, (BadImage, ImageUnavailable)):
            kind = BAD_IMAGE if isinstance(error, BadImage) else IMAGE_UNAVAILABLE
            return cls("error", kind, error.reason, error.reason)
        reason = first_line(error)
        return cls("error", WORKER_DIED if isinstance(error, PoisonInput) else WORKER, reason, reason)

    def data(self) -> dict[str, Any]:
        """The row's `data`: the one error shape of results and postprocessing rows."""
        return {"error": {"kind": self.kind, "message": self.reason, "status_code": self.status_code}}


def call_service(call: Callable[[], T], *, final_attempt: bool, retrying_own_pixels: bool = False) -> T | Failure:
    """Run `call` (load the image, call the service); its answer, or the Failure to record. A passing failure is
    raised instead while attempts remain, so the queue retries it. `retrying_own_pixels`: the call sends an image
    Windmill encoded itself, and this is a retry."""
    try:
        return call()
    except (ServiceCallError, BadImage, ImageUnavailable) as error:
        refused_again = retrying_own_pixels and isinstance(error, ServiceCallError) and error.refuses_the_upload
        if error.retryable and not final_attempt and not refused_again:
            raise
        return Failure.of(error)
