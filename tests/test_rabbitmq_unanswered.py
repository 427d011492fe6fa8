"""A broker that takes connections and does not answer must neither hang a consumer nor stop it: not a socket that
resets the connection it just accepted (as a node being killed or starting does), nor one that never says a word of
AMQP, nor a broker that opens the connection and then never answers a channel's calls (as a node still booting, or
a stuck one, can). The consumer gives each attempt up (after its answer timeout), tries again, and consumes once a
real broker answers."""

from __future__ import annotations

import socket
import struct
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from urllib.parse import urlsplit, urlunsplit

import pika.exceptions
import pika.frame
import pika.spec
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from tests.conftest import wait_until
from tests.test_rabbitmq import Recorder, consumer_for, make_tasks, running, service_for
from windmill.broker.rabbitmq import RabbitMQBroker, is_fatal

ANSWER_TIMEOUT_S = 1.0
PLAN = ["reset", "silent", "mute"]  # what the first connections get: each must be given up and tried again


class UnansweringBroker:
    """A TCP front for a real broker: its first connections get what `plan` says, in order: "reset" (reset once the
    client spoke), "silent" (not a byte back) or "mute" (the AMQP handshake, so the connection opens, then no answer
    to anything); later ones are relayed to the real broker. `kinds` lists what each connection got."""

    def __init__(self, real_url: str, plan: list[str]) -> None:
        self._real = urlsplit(real_url)
        self._plan = plan
        self.kinds: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._sockets: list[socket.socket] = [self._listener]
        self._closed = threading.Event()

    @property
    def url(self) -> str:
        host = f"127.0.0.1:{self._listener.getsockname()[1]}"
        login = self._real.netloc.rpartition("@")[0]
        return urlunsplit(self._real._replace(netloc=f"{login}@{host}" if login else host))

    def start(self) -> None:
        threading.Thread(target=self._accept, name="unanswering-broker", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        for sock in self._sockets:
            with suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            kind = self._plan[len(self.kinds)] if len(self.kinds) < len(self._plan) else "relayed"
            self.kinds.append(kind)
            serve = {"reset": self._reset, "silent": self._swallow, "mute": self._handshake_then_swallow,
                     "relayed": self._relay}[kind]
            threading.Thread(target=serve, args=(client,), daemon=True).start()

    @staticmethod
    def _reset(client: socket.socket) -> None:
        with suppress(OSError):
            client.recv(8)  # the protocol header: the client is in the handshake now
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with an RST
            client.close()

    @staticmethod
    def _swallow(client: socket.socket) -> None:
        with suppress(OSError):
            while client.recv(65536):
                pass

    def _handshake_then_swallow(self, client: socket.socket) -> None:
        """Answer the protocol header, Start-Ok and Open as RabbitMQ would, then nothing (Tune-Ok needs no reply)."""
        replies = [pika.spec.Connection.Start(server_properties={"product": "unanswering"}),
                   pika.spec.Connection.Tune(channel_max=2047, frame_max=131072, heartbeat=0)]
        buffered = b""
        with suppress(OSError):
            while True:
                data = client.recv(65536)
                if not data:
                    return
                buffered += data
                while buffered:
                    consumed, frame = pika.frame.decode_frame(buffered)
                    if frame is None:
                        break
                    buffered = buffered[consumed:]
                    if isinstance(frame, (pika.frame.ProtocolHeader, pika.frame.Method)) and (
                            isinstance(frame, pika.frame.ProtocolHeader) or
                            isinstance(frame.method, pika.spec.Connection.StartOk)):
                        client.sendall(pika.frame.Method(0, replies.pop(0)).marshal())
                    elif isinstance(frame, pika.frame.Method) and isinstance(frame.method,
                                                                              pika.spec.Connection.Open):
                        client.sendall(pika.frame.Method(0, pika.spec.Connection.OpenOk()).marshal())

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection((self._real.hostname or "127.0.0.1", self._real.port or 5672))
        self._sockets.append(upstream)

        def pipe(source: socket.socket, target: socket.socket) -> None:
            with suppress(OSError):
                while data := source.recv(65536):
                    target.sendall(data)
            with suppress(OSError):
                target.shutdown(socket.SHUT_WR)

        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        pipe(client, upstream)


@contextmanager
def unanswering_broker(real_url: str, plan: list[str]) -> Iterator[UnansweringBroker]:
    broker = UnansweringBroker(real_url, plan)
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


def test_a_connection_lost_mid_handshake_is_worth_another_attempt_and_a_refusal_is_not() -> None:
    lost = repr(pika.exceptions.StreamLostError("Stream connection lost: ConnectionResetError(104)"))
    refused = repr(pika.exceptions.ConnectionClosedByBroker(403, "ACCESS_REFUSED - Login was refused"))
    for guess in (pika.exceptions.IncompatibleProtocolError, pika.exceptions.ProbableAuthenticationError,
                  pika.exceptions.ProbableAccessDeniedError):
        assert not is_fatal(guess(lost))
        assert is_fatal(guess(refused))


def test_a_broker_that_never_answers_is_given_up_and_tried_again_until_one_answers(
        amqp_url: str, admin: BlockingChannel) -> None:
    queue_name = f"queue_windmill_test_{uuid.uuid4().hex[:10]}"
    [task] = make_tasks(queue_name, 1)
    with RabbitMQBroker(amqp_url) as producer:
        producer.declare([service_for(queue_name)])
        producer.publish([task])
    handler = Recorder()
    try:
        with unanswering_broker(amqp_url, PLAN) as front:
            consumer = consumer_for(front.url, queue_name, handler, answer_timeout=ANSWER_TIMEOUT_S)
            with running(consumer):
                wait_until(lambda: handler.calls, timeout=20,
                           message=lambda: f"the task handled (connections so far: {front.kinds})")
        assert front.kinds[:len(PLAN) + 1] == [*PLAN, "relayed"]
        assert consumer.attempts == len(PLAN) and "did not answer" in consumer.last_failure
        assert handler.calls == [task.task_id]
    finally:
        for queue in (queue_name, queue_name + ".dlq"):
            admin.queue_delete(queue)


def test_a_producer_gives_up_a_broker_that_never_answers_and_publishes_through_the_next(
        amqp_url: str, admin: BlockingChannel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("windmill.broker.rabbitmq.ANSWER_TIMEOUT_S", ANSWER_TIMEOUT_S)
    queue_name = f"queue_windmill_test_{uuid.uuid4().hex[:10]}"
    tasks = make_tasks(queue_name, 3)
    try:
        with unanswering_broker(amqp_url, ["mute"]) as front, RabbitMQBroker(front.url) as producer:
            producer.publish(tasks)  # its queue declaration goes unanswered on the first connection
            assert front.kinds == ["mute", "relayed"] and producer.reconnects == 1
        assert admin.queue_declare(queue_name, passive=True).method.message_count == len(tasks)
    finally:
        for queue in (queue_name, queue_name + ".dlq"):
            admin.queue_delete(queue)
