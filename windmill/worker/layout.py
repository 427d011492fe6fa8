"""The pipeline's workers, listed once: what `windmill-cli run` and the demo start in one process, what
`workers start` runs as named processes on a machine, and what the benchmarks and the chaos run launch.

A `RoleSpec` is one role serving some services with some handler threads. The answer stage is one service
worker for every primary service; the product stage turns answers into merged boxes, postprocessing,
consensus and caption scores. A machine's named workers split them finer: one service worker per catalog
service, one postprocess worker per postprocessing service, and the scheduler's periodic backfill.
"""

from __future__ import annotations

from dataclasses import dataclass

from windmill.catalog import Catalog
from windmill.errors import WindmillError

# Catalog categories whose services get a named service worker each: spatial_only (face, pose) too, so tasks
# that `submit --services spatial_only` queues have a consumer (the seed left queue_face and queue_pose without one).
SERVICE_WORKER_CATEGORIES = ("primary", "spatial_only")


@dataclass(frozen=True)
class RoleSpec:
    role: str
    service: str | None = None  # a service name, a comma list, or a selection such as `primary`
    concurrency: int = 4  # handler threads

    def worker_arguments(self) -> tuple[str, ...]:
        """What follows `worker` on a command line for this role and its services (threads: add --concurrency)."""
        return ("--role", self.role, *(("--service", self.service) if self.service else ()))


# Every primary service, in one worker.
ANSWER_STAGE = RoleSpec("service", "primary", concurrency=8)
# Everything after the answers, one worker per role.
PRODUCT_STAGE = (
    RoleSpec("merger", concurrency=2),
    RoleSpec("consensus", concurrency=2),
    RoleSpec("postprocess", "colors,face,pose", concurrency=4),
    RoleSpec("caption_score", concurrency=2),
)
# Periodic upkeep: the scheduler queues the backfill (pg_cron or `windmill-cli backfill` can do it instead).
UPKEEP = (RoleSpec("scheduler", concurrency=1),)

# The pipeline in one process (the demo, the Python API's `workers()`): answers and products, no upkeep.
SINGLE_MACHINE = (ANSWER_STAGE, *PRODUCT_STAGE)


def every_role(catalog: Catalog) -> tuple[RoleSpec, ...]:
    """Everything a machine runs, in one process (`windmill-cli run`, windmill-run.service): the services of every
    named service worker (primary and spatial_only) in one service worker, the product stage, and the upkeep."""
    services = [service.name for service in catalog.services if service.category in SERVICE_WORKER_CATEGORIES]
    return (RoleSpec("service", ",".join(services), concurrency=ANSWER_STAGE.concurrency), *PRODUCT_STAGE, *UPKEEP)


def machine_workers(catalog: Catalog) -> dict[str, RoleSpec]:
    """A machine's workers by name: a service worker per primary and spatial_only catalog service (named after
    the service), then the product stage with one worker per postprocessing service (`postprocess_colors`, …),
    then the upkeep. Services of a spec that lists several become one worker each, named `<role>_<service>`."""
    named = {
        service.name: RoleSpec("service", service.name)
        for service in catalog.services
        if service.category in SERVICE_WORKER_CATEGORIES
    }
    for spec in (*PRODUCT_STAGE, *UPKEEP):
        services = spec.service.split(",") if spec.service else []
        split = [(f"{spec.role}_{service}", RoleSpec(spec.role, service)) for service in services]
        for name, worker in split if len(split) > 1 else [(spec.role, RoleSpec(spec.role, spec.service))]:
            if name in named:
                raise WindmillError(f"the catalog service {name!r} has the name of a pipeline worker; "
                                    "rename the service")
            named[name] = worker
    return named
