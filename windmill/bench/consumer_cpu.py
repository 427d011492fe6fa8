"""Consumer CPU benchmark: process CPU (user + system, getrusage) that `RabbitMQConsumer` spends per task when its
handler does nothing, so what is measured is receiving, handing out and settling deliveries. The tasks are
published first (by a connection of their own, before the clock starts), spread evenly over `queues` queues; the
consumer then runs with a lane of `threads` handler threads and the same prefetch per queue, as a service worker's
lanes do (a primary service worker with 8 threads has 11 lanes of 1), until every task is handled and it has
drained. Broker: WINDMILL_AMQP_URL, else guest@127.0.0.1:5672.

    python -m windmill.bench.consumer_cpu [tasks] [threads] [queues]

prints one line: tasks, threads, CPU µs per task (the process's, and of it the connection thread's), wall
seconds. Compare two trees by running a copy of this file (outside the package, so that PYTHONPATH decides which
windmill it imports) with PYTHONPATH pointing at each, interleaved, on an otherwise idle machine.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
import uuid

import pika
from pika.adapters.blocking_connection import BlockingConnection

from windmill.broker.base import Task
from windmill.broker.consumer import RabbitMQConsumer
from windmill.broker.rabbitmq import RabbitMQBroker, dead_letter_queue

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _tasks(queue: str, count: int) -> list[Task]:
    return [Task(task_id=str(uuid.uuid4()), image_id=n, image_filename=f"{n}.jpg", image_path=None,
                 image_url=f"https://images.example/{n}.jpg", submitted_at="2025-09-07T12:00:00+00:00",
                 service_name="bench", queue_name=queue) for n in range(count)]


def measure(amqp_url: str, tasks: int, threads: int, queues: int = 1) -> tuple[float, float, float]:
    """(process CPU µs per task, the connection thread's CPU µs per task, wall seconds) of consuming `tasks`
    no-op tasks from `queues` queues with a lane of `threads` handler threads each."""
    names = [f"queue_bench_consumer_{uuid.uuid4().hex[:8]}" for _ in range(max(1, queues))]
    with RabbitMQBroker(amqp_url) as broker:
        for n, queue in enumerate(names):
            broker.publish(_tasks(queue, tasks // len(names) + (n < tasks % len(names))))
    handled = 0
    lock, done = threading.Lock(), threading.Event()

    def handle(_task: Task, _first: bool) -> None:
        nonlocal handled
        with lock:
            handled += 1
            if handled >= tasks:
                done.set()

    lanes = dict.fromkeys(names, threads)
    consumer = RabbitMQConsumer(amqp_url, lanes, handle, concurrency=lanes)
    connection_thread_cpu_s = 0.0

    def run() -> None:
        nonlocal connection_thread_cpu_s
        try:
            consumer.run()
        finally:
            connection_thread_cpu_s = time.thread_time()

    runner = threading.Thread(target=run, name="bench-consumer")
    try:
        started_cpu, started = _cpu_s(), time.monotonic()
        runner.start()
        if not done.wait(600):
            raise SystemExit(f"only {handled} of {tasks} tasks handled in 600 s")
        consumer.request_stop()
        runner.join()
        cpu, wall = _cpu_s() - started_cpu, time.monotonic() - started
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
    return cpu / tasks * 1e6, connection_thread_cpu_s / tasks * 1e6, wall


def main(argv: list[str]) -> int:
    tasks = int(argv[0]) if argv else 20_000
    threads = int(argv[1]) if len(argv) > 1 else 8
    queues = int(argv[2]) if len(argv) > 2 else 1
    per_task_us, connection_thread_us, wall = measure(os.environ.get("WINDMILL_AMQP_URL", DEFAULT_URL), tasks,
                                                      threads, queues)
    print(f"tasks {tasks} queues {queues} threads {threads} cpu_us_per_task {per_task_us:.1f} "
          f"connection_thread_us_per_task {connection_thread_us:.1f} wall_s {wall:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
