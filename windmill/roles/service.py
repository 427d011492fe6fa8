"""The service role: one image × service task → one results row (success, or error/timeout with its reason).

One process may serve several services (`--service yolov8` or `--service primary`); its services share the
process's farm client and cache of prepared images (RoleContext), so an image is read and validated once per
process, not once per service.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from windmill.broker.base import Task
from windmill.broker.ledger import DeathsInLedger
from windmill.catalog import Catalog, Service
from windmill.db.queries import fetch_value, query
from windmill.errors import PoisonInput, WindmillError
from windmill.farm import FarmClient, ServiceAnswer
from windmill.image_cache import ImageSource
from windmill.images import FileMissing, PreparedImage
from windmill.jobs import Job, PermanentJobError
from windmill.jobs.handoff import Handoff
from windmill.roles.answers import Answer, AnswerWriter
from windmill.roles.outcome import Failure, call_service
from windmill.roles.registry import Role, RoleContext, TaskHandling, register_role

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What a task wrote: the results status, or None when the task had already been answered."""

    status: str | None
    result_id: int | None = None


class ServiceTaskHandler:
    """Runs tasks; thread-safe. What is retried and what is recorded, and the error row's shape: roles/outcome.py.
    The rows go through `answers`, which writes those of the process's threads that come together in one
    transaction (roles/answers.py); one per handler unless given."""

    def __init__(self, pool: ConnectionPool, farm: FarmClient, images: ImageSource, catalog: Catalog,
                 worker_id: str, *, answers: AnswerWriter | None = None) -> None:
        self.pool = pool
        self.farm = farm
        self.images = images
        self.catalog = catalog
        self.worker_id = worker_id
        self.answers = answers or AnswerWriter(pool, catalog)

    def handle(self, task: Task, *, final_attempt: bool, first_delivery: bool = False,
               handoff: Handoff | None = None) -> Outcome:
        """`first_delivery`: the queue guarantees this task was never handed out before, so the check for an
        earlier answer (a round trip per task) is skipped; the insert stays idempotent either way. `handoff`: the
        task's job, to complete with the answer's write (windmill.jobs.handoff)."""
        if task.service_name not in self.catalog:
            raise PermanentJobError(f"task for unknown service {task.service_name!r}")
        service = self.catalog[task.service_name]
        if not first_delivery and self._answered(task):
            log.info("task %s already answered; nothing to do", task.task_id, extra={"action": "task_duplicate"})
            return Outcome(None)

        def call() -> ServiceAnswer:
            image, path = self._inputs(service, task)
            return self.farm.analyze(service, image, image_url=task.image_url, image_path=path)

        answer = call_service(call, final_attempt=final_attempt)
        if isinstance(answer, Failure):
            return self._record_failure(task, answer, handoff)
        return self._record(task, "success", answer.data, processing_time=answer.processing_time, handoff=handoff)

    def _inputs(self, service: Service, task: Task) -> tuple[PreparedImage | None, str | None]:
        """The image as `service` is given it, read from the path the task carries; when no file is there any more,
        from the image's path now if it has another (`images watch` follows a file renamed while its tasks waited).
        A round trip only then: a file found costs nothing more."""
        try:
            return self.images.inputs_for(service, task.image_id, task.image_path, task.image_url)
        except FileMissing:
            with self.pool.connection() as conn:
                row = conn.execute(query("current_image_path"), {"image_id": task.image_id}).fetchone()
            if row is None or row[0] is None or row[0] == task.image_path:
                raise
            return self.images.inputs_for(service, task.image_id, row[0], task.image_url)

    def record_failure(self, task: Task, failure: BaseException, handoff: Handoff | None = None) -> Outcome:
        """The final attempt failed (or its workers died on it: a PoisonInput): store it as the task's error/timeout
        row (every failure is a row), with the job's `handoff` when it has one."""
        return self._record_failure(task, Failure.of(failure), handoff)

    def _record_failure(self, task: Task, failure: Failure, handoff: Handoff | None = None) -> Outcome:
        return self._record(task, failure.status, failure.data(), error_message=failure.error_message,
                            processing_time=failure.processing_time, handoff=handoff)

    def _answered(self, task: Task) -> bool:
        with self.pool.connection() as conn:
            return fetch_value(conn, "task_result_exists", {"task_id": task.task_id})

    def _record(self, task: Task, status: str, data: dict[str, Any], *, error_message: str | None = None,
                processing_time: float = 0.0, handoff: Handoff | None = None) -> Outcome:
        try:
            result_id = self.answers.write(Answer(
                image_id=task.image_id, service=task.service_name, task_id=task.task_id, data=data, status=status,
                worker_id=self.worker_id, error_message=error_message, processing_time=processing_time,
                handoff=handoff))
        except psycopg.errors.ForeignKeyViolation:
            # The image was removed while its task was on the way (`images remove`): the answer belongs to nothing,
            # and trying again would only fail again (via RabbitMQ, into the dead-letter queue).
            log.info("image %d was removed; its %s answer dropped", task.image_id, task.service_name,
                     extra={"action": "answer_of_removed_image_dropped"})
            return Outcome(None)
        if status != "success":
            log.warning("%s on image %d: %s", task.service_name, task.image_id, error_message,
                        extra={"action": "service_failed"})
        return Outcome(status, result_id)


def serviceable(catalog: Catalog, selection: str | None) -> list[Service]:
    """The services a service worker may run: any image-analysing service (caption_score needs a caption)."""
    if not selection:
        raise WindmillError("the service role needs --service NAME (or a selection such as primary)")
    return catalog.select_for_tasks(selection)


@register_role("service", "calls an Animal Farm service for each image task of "
               "queue_<service> (--service: a name, list or selection)", takes_service=True)
def service_role(context: RoleContext) -> Role:
    services = serviceable(context.catalog, context.service)
    answers = AnswerWriter(context.pool, context.catalog, jobs=context.jobs)
    handler = ServiceTaskHandler(context.pool, context.farm, context.images, context.catalog, context.worker_id,
                                 answers=answers)

    def handle(job: Job, handoff: Handoff | None = None) -> None:
        handler.handle(Task.from_message(job.payload), final_attempt=job.attempts >= job.max_attempts,
                       first_delivery=job.attempts == 1 and job.last_error is None, handoff=handoff)

    def record_dead_letter(task: Task, error: BaseException) -> None:
        if task.service_name in context.catalog:  # an unknown service has no row to hold the failure
            handler.record_failure(task, error)

    def record_poison(job: Job, poison: PoisonInput, handoff: Handoff | None) -> None:
        task = Task.from_message(job.payload)
        if task.service_name not in context.catalog:
            raise PermanentJobError(f"task for unknown service {task.service_name!r}: {poison}")
        handler.record_failure(task, poison, handoff)

    tasks = TaskHandling(handle=lambda task, first: handler.handle(task, final_attempt=False, first_delivery=first),
                         on_dead_letter=record_dead_letter,
                         deaths=DeathsInLedger(context.pool, (service.name for service in services)))
    return Role(name="service", queues=tuple(service.queue_name for service in services), handle=handle,
                hand_off=handle, close=answers.close, service=",".join(service.name for service in services),
                tasks=tasks, record_poison=record_poison,
                service_queues={service.queue_name: context.farm.limits.limit(service.name) for service in services})
