"""A task role fed by RabbitMQ: one consumer for all the role's queues, a lane of threads per queue, plus the same
presence in the `workers` table as job-table workers."""

from __future__ import annotations

import logging
import threading

from psycopg_pool import ConnectionPool

from windmill.broker.base import Task, TaskHandler
from windmill.broker.consumer import RabbitMQConsumer
from windmill.db.schema import SchemaOvertaken
from windmill.errors import first_line
from windmill.roles.registry import Role
from windmill.stopping import join_in_slices
from windmill.worker.lanes import describe_lanes, plan_lanes
from windmill.worker.presence import WorkerPresence

log = logging.getLogger(__name__)
HEARTBEAT_S = 5.0


class BrokerWorker:
    def __init__(self, amqp_url: str, role: Role, pool: ConnectionPool, *, worker_id: str, concurrency: int,
                 max_attempts: int = 5, retry_delay_s: float = 1.0, drain_timeout_s: float = 30.0) -> None:
        if role.tasks is None:
            raise ValueError(f"role {role.name} does not take tasks from a broker")
        self.role = role
        self.presence = WorkerPresence(pool, worker_id, role.name, role.service, services_down=role.services_down)
        self.stopping = threading.Event()
        self.jobs_done = 0
        self.jobs_failed = 0
        self._counter_lock = threading.Lock()
        tasks = role.tasks
        # A lane per queue (windmill.worker.lanes), its prefetch its threads and one task waiting: RabbitMQ hands a
        # queue one task more than it can start, and a slow service holds only its own threads.
        self.lanes = plan_lanes(role.queues, {queue: role.service_queues.get(queue) for queue in role.queues},
                                concurrency)
        threads = {queue: lane.threads for lane in self.lanes for queue in lane.queues}
        prefetch = {queue: lane.prefetch for lane in self.lanes for queue in lane.queues}
        self.consumer = RabbitMQConsumer(
            amqp_url, prefetch, self._counted(tasks.handle), concurrency=threads, max_attempts=max_attempts,
            stopping=self.stopping, retry_delay=retry_delay_s, drain_timeout=drain_timeout_s,
            on_dead_letter=tasks.on_dead_letter, connection_name=f"windmill {worker_id}", deaths=tasks.deaths)

    def _counted(self, handle: TaskHandler) -> TaskHandler:
        def counted(task: Task, first_delivery: bool) -> None:
            try:
                handle(task, first_delivery)
            except BaseException:
                with self._counter_lock:
                    self.jobs_failed += 1
                raise
            with self._counter_lock:
                self.jobs_done += 1

        return counted

    def request_stop(self, *, immediately: bool = False) -> None:
        """Stop consuming; running handlers get the drain timeout to finish and be acked, none with
        `immediately`. RabbitMQ redelivers the messages of those that did not finish."""
        self.consumer.request_stop(immediately=immediately)

    def run(self) -> int:
        self.presence.announce()
        log.info("worker %s consuming from RabbitMQ, threads by queue: %s", self.presence.worker_id,
                 describe_lanes(self.lanes), extra={"action": "worker_started"})
        failures: list[BaseException] = []

        def consume() -> None:
            try:
                self.consumer.run()
            except BaseException as error:  # a consumer that cannot go on stops the whole worker
                failures.append(error)
                self.stopping.set()

        thread = threading.Thread(target=consume, name="rabbitmq-consumer")
        thread.start()
        overtaken = False
        while not self.stopping.wait(HEARTBEAT_S):
            try:
                self.presence.beat(self.jobs_done, self.jobs_failed)
            except SchemaOvertaken as error:  # the tasks in hand drain; RabbitMQ keeps the rest for a newer worker
                overtaken = True
                error.say(log)
                self.request_stop()
            except Exception as error:
                log.warning("heartbeat failed (%s)", first_line(error), extra={"action": "heartbeat_failed"})
        join_in_slices(thread)  # a second signal (leave now) must still reach this main thread (windmill.stopping)
        self.presence.stopped(self.jobs_done, self.jobs_failed)
        self.role.close()
        for failure in failures:
            log.error("consumer stopped: %s", first_line(failure), extra={"action": "worker_fatal"})
        return 1 if failures or overtaken else 0
