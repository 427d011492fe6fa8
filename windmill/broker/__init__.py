"""Ingest queues for image × service tasks: one interface, backed by RabbitMQ or by the job table."""

from windmill.broker.base import Broker, Task
from windmill.broker.jobtable import JobTableBroker

__all__ = ["Broker", "JobTableBroker", "Task"]
