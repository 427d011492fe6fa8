"""Which ingest path image × service tasks take, decided in one place for `submit`, the API and the workers:
RabbitMQ when it is configured, else the PostgreSQL job table; `--broker` overrides."""

from __future__ import annotations

import threading

from psycopg_pool import ConnectionPool

from windmill.broker.base import Broker
from windmill.errors import WindmillError
from windmill.settings import Settings

RABBITMQ = "rabbitmq"
JOB_TABLE = "postgres"
BROKERS = (RABBITMQ, JOB_TABLE)  # the values of --broker


def uses_rabbitmq(settings: Settings, broker: str | None = None) -> bool:
    """Whether tasks travel through RabbitMQ: `broker` when given, else RabbitMQ exactly when it is configured.
    Asking for RabbitMQ without a configured URL is refused with the variables to set."""
    if broker is None:
        return settings.uses_rabbitmq
    if broker not in BROKERS:
        raise WindmillError(f"unknown broker {broker!r}; valid brokers: {', '.join(BROKERS)}")
    if broker == RABBITMQ and settings.amqp_url is None:
        raise WindmillError("--broker rabbitmq needs WINDMILL_AMQP_URL (or QUEUE_HOST and QUEUE_USER)")
    return broker == RABBITMQ


def open_task_broker(settings: Settings, pool: ConnectionPool, *, rabbitmq: bool,
                     stopping: threading.Event | None = None) -> Broker:
    """The publisher of image × service tasks: RabbitMQ (connected now) or the job table through `pool`. Once
    `stopping` is set, RabbitMQ gives up instead of waiting to try again."""
    if rabbitmq:
        from windmill.broker.rabbitmq import RabbitMQBroker

        assert settings.amqp_url is not None  # uses_rabbitmq() refused RabbitMQ without a URL
        return RabbitMQBroker(settings.amqp_url, stopping=stopping)
    from windmill.broker.jobtable import JobTableBroker
    from windmill.jobs import JobQueue

    return JobTableBroker(JobQueue(pool))


def describe(rabbitmq: bool) -> str:
    """Where the tasks went, for a sentence: `RabbitMQ` or `the PostgreSQL job table`."""
    return "RabbitMQ" if rabbitmq else "the PostgreSQL job table"
