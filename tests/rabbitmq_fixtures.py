"""A real RabbitMQ for tests: WINDMILL_TEST_AMQP_URL, else guest@127.0.0.1:5672. Tests fail, not skip, without
it. `rabbitmqctl` drives connection kills (WINDMILL_TEST_RABBITMQCTL overrides the command).

Tests that crash or restart the broker use `private_rabbitmq` instead: a node of the session's own (started once,
on free ports, its data in a temporary directory), so that nobody else sharing the machine's broker notices."""

from __future__ import annotations

import os
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from windmill.bench.private_rabbitmq import PrivateRabbitMQ
from windmill.broker.rabbitmq import describe_error
from windmill.catalog import Catalog
from windmill.errors import WindmillError
from windmill.settings import describe_url

AMQP_URL = os.environ.get("WINDMILL_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
RABBITMQCTL = shlex.split(os.environ.get("WINDMILL_TEST_RABBITMQCTL", "rabbitmqctl"))


@pytest.fixture(scope="session")
def amqp_url() -> str:
    try:
        BlockingConnection(pika.URLParameters(AMQP_URL)).close()
    except Exception as error:
        unreachable = describe_error(error)
    else:
        return AMQP_URL
    pytest.fail(f"RabbitMQ is not reachable at {describe_url(AMQP_URL)} ({unreachable}); "
                "start it (tests/run.sh does) or set WINDMILL_TEST_AMQP_URL", pytrace=False)


@pytest.fixture(scope="session")
def private_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbitMQ]:
    node = PrivateRabbitMQ(tmp_path_factory.mktemp("rabbitmq"), prefix="windmill-test")
    try:
        node.start()
    except WindmillError as error:
        pytest.fail(f"cannot start a private RabbitMQ node: {error}", pytrace=False)
    yield node
    node.discard()


@pytest.fixture
def private_rabbitmq(private_node: PrivateRabbitMQ) -> PrivateRabbitMQ:
    """The session's private RabbitMQ node, running (a test that failed while it was down left it stopped)."""
    if not private_node.running():
        private_node.start()
    return private_node


@pytest.fixture
def admin(amqp_url: str) -> Iterator[BlockingChannel]:
    """A channel of our own for looking into queues and for injecting raw messages, in confirm mode: a message it
    publishes is in its queue when the publish returns (without, a listing on another connection once read the DLQ
    before two of the three messages a test had just published had arrived)."""
    connection = BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    yield channel
    if connection.is_open:
        connection.close()


@pytest.fixture
def queue_name(amqp_url: str) -> Iterator[str]:
    """A queue name no other test uses; the queue and its DLQ are deleted afterwards."""
    name = f"queue_windmill_test_{uuid.uuid4().hex[:10]}"
    yield name
    connection = BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    for queue in (name, name + ".dlq"):
        channel.queue_delete(queue)
    connection.close()


def rabbitmqctl(*arguments: str) -> str:
    try:
        done = subprocess.run([*RABBITMQCTL, *arguments], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        pytest.fail(f"{RABBITMQCTL[0]} is not installed; set WINDMILL_TEST_RABBITMQCTL to a command that runs it",
                    pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"rabbitmqctl {' '.join(arguments)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def queues_of_our_own(catalog: Catalog, amqp_url: str) -> Iterator[Catalog]:
    """The catalog with queue names no other test run uses; the queues and their DLQs are deleted afterwards."""
    prefix = f"test_{uuid.uuid4().hex[:8]}_queue_"
    private = Catalog(tuple(replace(service, queue_prefix=prefix) for service in catalog.services))
    yield private
    connection = BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    for service in private.services:
        for queue in (service.queue_name, service.queue_name + ".dlq"):
            channel.queue_delete(queue)
    connection.close()


@pytest.fixture
def private_queues(catalog: Catalog, amqp_url: str) -> Iterator[Catalog]:
    yield from queues_of_our_own(catalog, amqp_url)


@pytest.fixture
def queues_on_private_node(catalog: Catalog, private_rabbitmq: PrivateRabbitMQ) -> Iterator[Catalog]:
    yield from queues_of_our_own(catalog, private_rabbitmq.amqp_url)
