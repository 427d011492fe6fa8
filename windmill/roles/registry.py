"""What a role is and what it may use, and the registry of roles: a role plugs into the worker runtime by
registration (a name, the queues it consumes, a handler). Below the worker: roles never import the runtime."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from psycopg_pool import ConnectionPool

from windmill.broker.base import Task, TaskHandler
from windmill.broker.poison import DeliveryDeaths
from windmill.catalog import Catalog
from windmill.db.connect import Database
from windmill.errors import PoisonInput, WindmillError
from windmill.farm import FarmClient
from windmill.image_cache import ImageSource
from windmill.jobs import Job, JobQueue
from windmill.jobs.handoff import Handoff
from windmill.settings import Settings


@dataclass(frozen=True)
class RoleContext:
    """What a role may use: it reaches the world only through these."""

    settings: Settings
    database: Database
    pool: ConnectionPool
    jobs: JobQueue
    catalog: Catalog
    worker_id: str
    # The process's one Animal Farm client, shared by every role it runs: the catalog's per-service
    # max_concurrency holds for the whole process only when every call goes through the same client.
    farm: FarmClient
    # The process's one cache of prepared images: an image is read and validated once for all its services and
    # its crops, whichever roles of the process ask for it.
    images: ImageSource
    service: str | None = None


@dataclass(frozen=True)
class TaskHandling:
    """How a role takes image × service tasks straight from a broker (RabbitMQ) instead of the job table."""

    handle: TaskHandler
    on_dead_letter: Callable[[Task, BaseException], object]  # the last attempt failed: record it
    # Where the deaths of redelivered deliveries are counted (a poison input is bounded: windmill.broker.poison).
    deaths: DeliveryDeaths | None = None


@dataclass(frozen=True)
class Role:
    name: str
    queues: tuple[str, ...]
    handle: Callable[[Job], object]
    close: Callable[[], None] = field(default=lambda: None)
    # `handle` for a job whose completion, and its lane's next claim, may ride on the write that stores its outcome
    # (windmill.jobs.handoff); None: the claim loop completes every job.
    hand_off: Callable[[Job, Handoff], object] | None = None
    service: str | None = None
    tasks: TaskHandling | None = None
    # Record the failure of a job that is a poison input (Job.poison: its workers died on it) without running it: the
    # role's error row, with the job's handoff when it has one. None: the role has no row for it; the job ends dead
    # with the reason.
    record_poison: Callable[[Job, PoisonInput, Handoff | None], object] | None = None
    # The queues that each call one service, with that service's per-process limit (None: unlimited): each gets a
    # lane of threads of its own (windmill.worker.lanes). The role's other queues share one lane.
    service_queues: Mapping[str, int | None] = field(default_factory=dict)
    # The services its process finds down, each with how long and why (windmill.farm.outages): its heartbeat says
    # them, so that `status` does. Set by build_role from the process's farm client.
    services_down: Callable[[], Mapping[str, tuple[float, str]]] | None = None
    # Its jobs fall due this long after they are queued (the merge's coalescing window, sql/0113): a notification
    # of its queues is answered by a claim that much later rather than at once.
    claim_delay_s: float = 0.0
    # With a delay: notifications within this long of a claim's first share that claim, made when the last of them
    # is due (windmill.worker.claim_state): fewer claims, each job waiting at most this much longer.
    claim_together_s: float = 0.0


RoleFactory = Callable[[RoleContext], Role]
_ROLES: dict[str, RoleFactory] = {}
_SUMMARIES: dict[str, str] = {}
_TAKING_A_SERVICE: set[str] = set()  # roles that read RoleContext.service (`worker --service`)
ServiceCheck = Callable[[str], object]  # raises WindmillError for a --service the role cannot work for
_SERVICE_CHECKS: dict[str, ServiceCheck] = {}


def register_role(name: str, summary: str = "", *, takes_service: bool = False,
                  check_service: ServiceCheck | None = None) -> Callable[[RoleFactory], RoleFactory]:
    """Register a role factory under `name`; `summary` is its line in `windmill-cli worker --list-roles`;
    `takes_service`: the role works for the service(s) `worker --service` names; `check_service` refuses a
    selection it cannot work for, before anything is started (check_role)."""

    def decorator(factory: RoleFactory) -> RoleFactory:
        _ROLES[name] = factory
        _SUMMARIES[name] = summary
        if takes_service:
            _TAKING_A_SERVICE.add(name)
        if check_service is not None:
            _SERVICE_CHECKS[name] = check_service
        return factory

    return decorator


def role_names() -> list[str]:
    import windmill.roles  # noqa: F401  (importing the package registers the built-in roles)

    return sorted(_ROLES)


def role_summaries() -> dict[str, str]:
    """Every role with its one-line summary, by name."""
    return {name: _SUMMARIES[name] for name in role_names()}


def check_role(name: str, service: str | None = None) -> None:
    """Refuse an unknown role name with the valid ones, and a `service` for a role that works for none, before
    anything is started for it (a merger given --service would run and ignore it)."""
    names = role_names()
    if name not in names:
        raise WindmillError(f"unknown role {name!r}; valid roles: {', '.join(names)} "
                            "(`windmill-cli worker --list-roles` says what each does)")
    if service is not None and name not in _TAKING_A_SERVICE:
        raise WindmillError(f"the {name} role takes no --service; only the {' and '.join(sorted(_TAKING_A_SERVICE))} "
                            "roles do")
    if service is not None and name in _SERVICE_CHECKS:
        _SERVICE_CHECKS[name](service)


def build_role(name: str, context: RoleContext) -> Role:
    check_role(name)
    role = _ROLES[name](context)
    outages = context.farm.outages if context.farm is not None else None
    return role if outages is None else replace(role, services_down=outages.described)
