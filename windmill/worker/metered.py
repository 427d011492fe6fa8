"""A worker's jobs counted and timed: the runtime's hooks wired to the process's metrics (metrics know no worker)."""

from __future__ import annotations

from dataclasses import replace

from windmill.jobs import Job
from windmill.metrics import WorkerMetrics, job_service
from windmill.worker.runtime import WorkerHooks


def metered_hooks(metrics: WorkerMetrics, role: str, base: WorkerHooks | None = None) -> WorkerHooks:
    """Worker hooks that count and time every job of `role` (keeping `base`'s other hooks)."""

    def on_handled(job: Job, error: BaseException | None, seconds: float) -> None:
        metrics.handled(role, job_service(job), error, seconds)
        if base is not None and base.on_handled is not None:
            base.on_handled(job, error, seconds)

    return replace(base or WorkerHooks(), on_handled=on_handled)
