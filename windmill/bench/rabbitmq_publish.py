"""RabbitMQ publish benchmark: tasks/s that `RabbitMQBroker.publish` stores with publisher confirms (persistent
messages, durable queue), min/median/max of 3 runs. Broker: WINDMILL_AMQP_URL, else guest@127.0.0.1:5672.

    python -m windmill.bench.rabbitmq_publish [tasks] [runs]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid

import pika
from pika.adapters.blocking_connection import BlockingConnection

from windmill.broker.base import Task
from windmill.broker.rabbitmq import RabbitMQBroker, dead_letter_queue
from windmill.settings import describe_url

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def make_tasks(queue_name: str, count: int) -> list[Task]:
    return [
        Task(task_id=str(uuid.uuid4()), image_id=n, image_filename=f"image_{n:07d}.jpg",
             image_path=f"/data/images/image_{n:07d}.jpg", image_url=f"https://images.example/image_{n:07d}.jpg",
             submitted_at="2025-09-07T12:00:00+00:00", service_name="bench", queue_name=queue_name)
        for n in range(count)
    ]


def publish_run(amqp_url: str, tasks_count: int) -> float:
    """Publish `tasks_count` tasks to a fresh queue; tasks/s from the first publish to the last confirm."""
    queue_name = f"queue_bench_publish_{uuid.uuid4().hex[:8]}"
    tasks = make_tasks(queue_name, tasks_count)
    broker = RabbitMQBroker(amqp_url, connection_name="windmill bench publish")
    try:
        broker.publish(tasks[:1])  # connect and declare outside the timing
        started = time.perf_counter()
        broker.publish(tasks[1:])
        elapsed = time.perf_counter() - started
        stored = broker.queue_depths([queue_name])[queue_name]
        if stored < tasks_count:
            raise RuntimeError(f"the queue holds {stored} messages, fewer than the {tasks_count} published")
        if broker.reconnects:  # tasks unconfirmed when the connection dropped were published again
            print(f"  (the connection dropped {broker.reconnects} times: {stored - tasks_count} duplicates)")
        return (tasks_count - 1) / elapsed
    finally:
        broker.close()
        connection = BlockingConnection(pika.URLParameters(amqp_url))
        channel = connection.channel()
        for name in (queue_name, dead_letter_queue(queue_name)):
            channel.queue_delete(name)
        connection.close()


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    tasks_count = int(arguments[0]) if arguments else 200_000
    runs = int(arguments[1]) if len(arguments) > 1 else 3
    amqp_url = os.environ.get("WINDMILL_AMQP_URL", DEFAULT_URL)
    print(f"RabbitMQ publish with confirms: {tasks_count:,} persistent tasks to a durable queue at "
          f"{describe_url(amqp_url)}")
    rates = []
    for n in range(runs):
        rates.append(publish_run(amqp_url, tasks_count))
        print(f"  run {n + 1}: {rates[-1]:,.0f} tasks/s", flush=True)
    print(f"  → min {min(rates):,.0f} / median {statistics.median(rates):,.0f} / max {max(rates):,.0f} tasks/s")


if __name__ == "__main__":
    main()
