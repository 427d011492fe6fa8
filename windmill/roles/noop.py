"""The `noop` role: completes jobs of the `noop` queue without doing anything (queue benchmarks, smoke tests)."""

from __future__ import annotations

from windmill.jobs import Job
from windmill.roles.registry import Role, RoleContext, register_role

NOOP_QUEUE = "noop"


def _handle(job: Job) -> None:
    """Nothing to do: the job's whole cost is the queue's."""


@register_role("noop", "does nothing with its jobs (queue noop; the queue benchmark)")
def noop_role(context: RoleContext) -> Role:
    return Role(name="noop", queues=(NOOP_QUEUE,), handle=_handle)
