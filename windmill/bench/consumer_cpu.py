"""Consumer CPU benchmark: process CPU (user + system, getrusage) that `RabbitMQConsumer` spends per task, so what
is measured is receiving, handing out and settling deliveries. The tasks are published first (by a connection of
their own, before the clock starts), spread evenly over `queues` queues; the consumer then runs with a lane of
`threads` handler threads and a lane's prefetch per queue (windmill.worker.lanes.broker_prefetch), as a service
worker's lanes do (a primary service worker with 8 threads has 11 lanes of 1), until every task is handled and it
has drained. Broker: WINDMILL_AMQP_URL, else guest@127.0.0.1:5672.

    python -m windmill.bench.consumer_cpu [tasks] [threads] [queues] [sleep_ms]

Without `sleep_ms` the handlers do nothing: deliveries and settlements come in big batches (the burst regime).
With `sleep_ms` (`5-30`: each task sleeps a time drawn uniformly from that range, seeded by its queue and number)
they take as long as a farm call does, so a lane with a prefetch of its threads gets its next delivery only after
the previous ack went out: each frame comes on its own (the trickle regime, a service worker's real one).

prints one line: tasks, queues, threads, CPU µs per task (the process's, and of it the connection thread's),
passes of the connection's I/O loop (pika's IOLoop.poll) per task, wall seconds. Compare two trees by running a
copy of this file (outside the package, so that PYTHONPATH decides which windmill it imports) with PYTHONPATH
pointing at each, interleaved, on an otherwise idle machine.
"""

from __future__ import annotations

import os
import random
import resource
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pika
from pika.adapters.blocking_connection import BlockingConnection
from pika.adapters.select_connection import IOLoop

from windmill.broker.base import Task
from windmill.broker.consumer import RabbitMQConsumer
from windmill.broker.rabbitmq import RabbitMQBroker, dead_letter_queue
from windmill.worker.lanes import broker_prefetch

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
RUNNER_NAME = "bench-consumer"


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _tasks(queue: str, count: int) -> list[Task]:
    return [Task(task_id=str(uuid.uuid4()), image_id=n, image_filename=f"{n}.jpg", image_path=None,
                 image_url=f"https://images.example/{n}.jpg", submitted_at="2025-09-07T12:00:00+00:00",
                 service_name="bench", queue_name=queue) for n in range(count)]


def parse_sleep_ms(text: str) -> tuple[float, float]:
    """`5-30` → (5.0, 30.0); `10` → (10.0, 10.0)."""
    low, _, high = text.partition("-")
    return float(low), float(high or low)


def handling_times_s(queue_index: int, count: int, sleep_ms: tuple[float, float]) -> list[float]:
    """How long each task of a queue sleeps: the same draws for the same queue number in every run and tree."""
    draws = random.Random(f"consumer_cpu {queue_index}")
    return [draws.uniform(*sleep_ms) / 1000 for _ in range(count)]


@contextmanager
def counting_loop_passes() -> Iterator[Callable[[], int]]:
    """Counts the passes of pika's I/O loop (each a poll that returned) made by the consumer's thread."""
    passes = 0
    original = IOLoop.poll

    def poll(self: IOLoop) -> None:
        nonlocal passes
        original(self)
        if threading.current_thread().name == RUNNER_NAME:
            passes += 1

    IOLoop.poll = poll
    try:
        yield lambda: passes
    finally:
        IOLoop.poll = original


def measure(amqp_url: str, tasks: int, threads: int, queues: int = 1,
            sleep_ms: tuple[float, float] | None = None) -> tuple[float, float, float, float]:
    """(process CPU µs per task, the connection thread's CPU µs per task, I/O loop passes per task, wall seconds) of
    consuming `tasks` tasks from `queues` queues with a lane of `threads` handler threads each; each handler sleeps
    a time drawn from `sleep_ms` (None: returns at once)."""
    names = [f"queue_bench_consumer_{uuid.uuid4().hex[:8]}" for _ in range(max(1, queues))]
    sleeps: dict[tuple[str, int], float] = {}
    with RabbitMQBroker(amqp_url) as broker:
        for n, queue in enumerate(names):
            count = tasks // len(names) + (n < tasks % len(names))
            broker.publish(_tasks(queue, count))
            if sleep_ms is not None:
                sleeps.update(((queue, image), seconds)
                              for image, seconds in enumerate(handling_times_s(n, count, sleep_ms)))
    handled = 0
    lock, done = threading.Lock(), threading.Event()

    def handle(task: Task, _first: bool) -> None:
        nonlocal handled
        if sleeps:
            time.sleep(sleeps[task.queue_name, task.image_id])
        with lock:
            handled += 1
            if handled >= tasks:
                done.set()

    consumer = RabbitMQConsumer(amqp_url, dict.fromkeys(names, broker_prefetch(threads)), handle,
                                concurrency=dict.fromkeys(names, threads))
    connection_thread_cpu_s = 0.0

    def run() -> None:
        nonlocal connection_thread_cpu_s
        try:
            consumer.run()
        finally:
            connection_thread_cpu_s = time.thread_time()

    runner = threading.Thread(target=run, name=RUNNER_NAME)
    try:
        with counting_loop_passes() as passes:
            started_cpu, started = _cpu_s(), time.monotonic()
            runner.start()
            if not done.wait(600):
                raise SystemExit(f"only {handled} of {tasks} tasks handled in 600 s")
            consumer.request_stop()
            runner.join()
            cpu, wall = _cpu_s() - started_cpu, time.monotonic() - started
            loop_passes = passes()
    finally:
        consumer.request_stop(immediately=True)
        connection = BlockingConnection(pika.URLParameters(amqp_url))
        channel = connection.channel()
        left = sum(channel.queue_declare(queue=queue, passive=True).method.message_count for queue in names)
        for queue in names:
            for name in (queue, dead_letter_queue(queue)):
                channel.queue_delete(name)
        connection.close()
    if left:
        raise SystemExit(f"{left} tasks left in the queue after the consumer stopped")
    return cpu / tasks * 1e6, connection_thread_cpu_s / tasks * 1e6, loop_passes / tasks, wall


def main(argv: list[str]) -> int:
    tasks = int(argv[0]) if argv else 20_000
    threads = int(argv[1]) if len(argv) > 1 else 8
    queues = int(argv[2]) if len(argv) > 2 else 1
    sleep_ms = parse_sleep_ms(argv[3]) if len(argv) > 3 else None
    per_task_us, connection_thread_us, passes, wall = measure(
        os.environ.get("WINDMILL_AMQP_URL", DEFAULT_URL), tasks, threads, queues, sleep_ms)
    handlers = "no-op" if sleep_ms is None else f"sleep_ms {sleep_ms[0]:g}-{sleep_ms[1]:g}"
    print(f"tasks {tasks} queues {queues} threads {threads} {handlers} cpu_us_per_task {per_task_us:.1f} "
          f"connection_thread_us_per_task {connection_thread_us:.1f} loop_passes_per_task {passes:.2f} "
          f"wall_s {wall:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
