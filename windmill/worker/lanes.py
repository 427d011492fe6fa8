"""A worker's threads shared out in lanes: each queue that calls one service gets a lane of its own, so a slow or
dead service holds only its own lane's threads and never those the other services need.

A lane is some queues and the handler threads that serve only them. A queue calling a service with a
per-process limit (the catalog's max_concurrency, or its fleet_max_concurrency when smaller) gets that many
threads, never more than the worker's thread budget (`--concurrency`): more would only wait for a place. The
other service queues share what is left of the budget evenly, at least one thread each; queues that call no one
service (merge, consensus, …) share one lane of the whole budget. The threads may therefore add up to more than the
budget: a worker for many services has at least one thread per service, and a service's limit is its own.

Claims follow the lanes: a lane never runs more of its queues' tasks than it has threads. From the job table it
claims no more than it has threads free, so no task of a busy service is held where another worker could start
it. From RabbitMQ it holds one task more (`Lane.prefetch`): that task waits in the process, so a thread that
finishes starts it at once and the finished task's ack rides on the connection thread's next pass instead of
waking it (windmill.broker.settling); without it each task of a trickle costs that thread two wake-ups.
Pure: the worker runtimes apply the plan.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Lane:
    queues: tuple[str, ...]
    threads: int
    # Calls a single service: claims stop at the threads free. A shared lane may hold up to the worker's batch.
    per_service: bool = True

    @property
    def prefetch(self) -> int:
        """How many of its queues' tasks a RabbitMQ channel hands it at once: its threads and one waiting."""
        return broker_prefetch(self.threads)

    @property
    def name(self) -> str:
        return ",".join(self.queues)


def broker_prefetch(threads: int) -> int:
    """The prefetch of a RabbitMQ channel feeding `threads` handler threads: one task waits besides those running."""
    return max(1, threads) + 1


def plan_lanes(queues: Sequence[str], service_queues: Mapping[str, int | None], budget: int) -> tuple[Lane, ...]:
    """The lanes of a worker with `budget` handler threads. `service_queues`: the queues that each call one service,
    with that service's per-process limit (None: unlimited); the other `queues` share one lane."""
    budget = max(1, budget)
    limited = {queue: min(limit, budget) for queue in queues
               if queue in service_queues and (limit := service_queues[queue]) is not None}
    unlimited = [queue for queue in queues if queue in service_queues and service_queues[queue] is None]
    shared = tuple(queue for queue in queues if queue not in service_queues)
    left = budget - sum(limited.values())
    share = max(1, math.ceil(left / len(unlimited))) if unlimited else 0
    lanes = [Lane((queue,), limited.get(queue, share)) for queue in queues
             if queue in service_queues]
    if shared:
        lanes.append(Lane(shared, budget, per_service=False))
    return tuple(lanes)


def describe_lanes(lanes: Sequence[Lane]) -> str:
    """How a worker's threads are shared out, for its start-up line: `queue_yolov8 4, queue_ollama 1`."""
    return ", ".join(f"{lane.name} {lane.threads}" for lane in lanes)
