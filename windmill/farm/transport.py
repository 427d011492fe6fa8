"""HTTP/1.1 exchanges with one service over keep-alive connections (the standard library's http.client).

The farm client spends most of a service call's CPU in its HTTP library: httpx and httpcore cost about 1.2 ms of
CPU per request here, http.client about 0.4 ms, and a service worker makes 11 calls per image. What httpx gave
besides (redirects, cookies, proxies, TLS, content decoding) the services do not use: they are plain HTTP on the
cluster network, never redirect a request that should be followed, and answer uncompressed JSON (requests say
`Accept-Encoding: identity`). What stays is what the client needs: connections reused most recent first, a stale
one (closed by the service while idle) dropped before it is used, a connect timeout apart from the read timeout,
and every failure raised as one of two exceptions the client classifies. The answer must come whole within the
timeout, not only each read: a service that sent its head a byte every two seconds held a worker's thread for good.
"""

from __future__ import annotations

import functools
import http.client
import io
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


class ConnectFailed(Exception):
    """No connection to the service: refused, unreachable, a name that does not resolve, or no answer in time."""

    def __init__(self, detail: str, *, timed_out: bool) -> None:
        super().__init__(detail)
        self.timed_out = timed_out


class ExchangeFailed(Exception):
    """The connection broke or went silent during the exchange, or the service broke HTTP."""

    def __init__(self, detail: str, *, timed_out: bool) -> None:
        super().__init__(detail)
        self.timed_out = timed_out


class ServiceConnections:
    """Keep-alive connections to one service; thread-safe. A connection serves one exchange at a time: a thread
    takes an idle one (or opens one) and gives it back when the answer was read to its end."""

    def __init__(self, host: str, port: int, *, max_idle: int) -> None:
        self.host = host
        self.port = port
        self.max_idle = max_idle
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        with self._lock:
            idle, self._idle, self._closed = self._idle, [], True
        for connection in idle:
            connection.close()

    @contextmanager
    def exchange(self, method: str, target: str, *, body: bytes | None, headers: Mapping[str, str],
                 connect_timeout: float, timeout: float) -> Iterator[http.client.HTTPResponse]:
        """Send one request and yield its response (headers read, body not yet). A failure of the exchange, in
        the block included, is a ConnectFailed or ExchangeFailed; other exceptions of the block pass as they
        are. The connection is reused only when the block read the answer to its end."""
        connection = self._take()
        response: http.client.HTTPResponse | None = None
        reusable = False
        try:
            if connection.sock is None:
                _connect(connection, connect_timeout)
                log.debug("connected to %s:%d", self.host, self.port, extra={"action": "farm_connected"})
            assert connection.sock is not None
            connection.sock.settimeout(timeout)
            try:
                _send(connection, method, target, body, headers)
                # The whole answer, head and body, within `timeout` of the request sent (_DeadlineReader).
                connection.response_class = functools.partial(  # type: ignore[assignment]  # a class's call
                    _Response, deadline=time.monotonic() + timeout)
                response = connection.getresponse()
                yield response
            except http.client.RemoteDisconnected:
                raise ExchangeFailed("Server disconnected without sending a response.", timed_out=False) from None
            except TimeoutError:
                raise ExchangeFailed("timed out", timed_out=True) from None
            except (OSError, http.client.HTTPException) as problem:
                raise ExchangeFailed(_describe(problem), timed_out=False) from None
            # read1 leaves a response whose declared length it has read open: closing it frees the connection.
            finished = response.isclosed() or (response.length == 0 and not response.chunked)
            if finished:
                response.close()
            reusable = finished and not response.will_close and connection.sock is not None
        finally:
            if reusable:
                self._give_back(connection)
            else:
                if response is not None:  # it owns the socket when the service said it closes the connection
                    response.close()
                connection.close()

    def _take(self) -> http.client.HTTPConnection:
        with self._lock:
            while self._idle:
                connection = self._idle.pop()
                if _still_open(connection):
                    return connection
                connection.close()
                log.debug("%s:%d closed an idle connection", self.host, self.port,
                          extra={"action": "farm_connection_closed"})
        return _Connection(self.host, self.port)

    def _give_back(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.max_idle:
                self._idle.append(connection)
                return
        connection.close()


class _Headers:
    """An answer's header fields, read without the email parser: what HTTPResponse asks of its message (get, get_all,
    items), with the values the email parser (policy compat32, http.client's) gives. Parsing a service's few headers
    through the email package cost about as much CPU as the rest of reading its answer."""

    __slots__ = ("_by_name", "_fields")

    def __init__(self, lines: list[bytes]) -> None:
        fields: list[tuple[str, str]] = []
        for raw in lines:
            line = raw.decode("iso-8859-1")
            if line in ("\r\n", "\n", ""):
                break
            if line[:1] in (" ", "\t") and fields:  # a folded line continues the field before it
                name, value = fields[-1]
                fields[-1] = (name, value + line)
                continue
            name, colon, value = line.partition(":")
            if colon:
                fields.append((name, value.lstrip(" \t")))
        self._fields = [(name, value.rstrip("\r\n")) for name, value in fields]
        self._by_name: dict[str, list[str]] = {}
        for name, value in self._fields:
            self._by_name.setdefault(name.lower(), []).append(value)

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self._by_name.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str, failobj: list[str] | None = None) -> list[str] | None:
        return list(self._by_name.get(name.lower(), ())) or failobj

    def items(self) -> list[tuple[str, str]]:
        return list(self._fields)


class _DeadlineReader(io.RawIOBase):
    """A socket's bytes for as long as a deadline allows: each read waits at most what is left, so an answer that
    trickles in (its head included, which http.client reads line by line) times out at the deadline."""

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, deadline: float) -> None:
        self._raw = raw  # http.client's reader of the socket: closing it lets the socket close (makefile's count)
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        self._sock.settimeout(left)
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _Response(http.client.HTTPResponse):
    """http.client's response with the header fields read by _Headers, read from the socket within `deadline`
    (time.monotonic()); the rest of `begin` as http.client's. An answer cut short by the connection closing, in its
    headers or before its Content-Length, is an ExchangeFailed (retried as a network failure): http.client takes the
    end of the stream for the end of the headers, and its read1 for the end of the body, so the cut answer read as a
    whole one (and as JSON that is malformed)."""

    _declared: int | None = None  # the body's Content-Length

    def __init__(self, sock: socket.socket, debuglevel: int = 0, method: str | None = None, url: str | None = None,
                 *, deadline: float | None = None) -> None:
        super().__init__(sock, debuglevel, method, url)
        if deadline is not None:
            self.fp = io.BufferedReader(_DeadlineReader(self.fp.detach(), sock, deadline))

    def read1(self, n: int = -1) -> bytes:
        data = super().read1(n)
        if not data and n and self.length and self._declared is not None:
            raise ExchangeFailed(f"the connection closed after {self._declared - self.length} of {self._declared} "
                                 "bytes", timed_out=False)
        return data

    def begin(self) -> None:
        if self.headers is not None:
            return
        while True:  # skip interim 100 Continue answers
            version, status, reason = self._read_status()
            if status != http.client.CONTINUE:
                break
            http.client._read_headers(self.fp)
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        lines = http.client._read_headers(self.fp)
        if lines[-1] == b"":  # the stream ended, not a blank line
            raise ExchangeFailed("the connection closed in the answer's headers", timed_out=False)
        self.headers = self.msg = _Headers(lines)
        encoding = self.headers.get("transfer-encoding")
        self.chunked = bool(encoding and encoding.lower() == "chunked")
        if self.chunked:
            self.chunk_left = None
        self.will_close = self._check_close()
        self.length = None
        length = self.headers.get("content-length")
        if length and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                self.length = None
            else:
                if self.length < 0:
                    self.length = None
        if status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED) or 100 <= status < 200 or \
                self._method == "HEAD":
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True
        self._declared = self.length


class _Connection(http.client.HTTPConnection):
    response_class = _Response


def _send(connection: http.client.HTTPConnection, method: str, target: str, body: bytes | None,
          headers: Mapping[str, str]) -> None:
    """Send the request. A service may answer before it has read the whole upload (413 for an image over its
    limit) and close the connection: when the upload breaks off so, its answer is read like any other."""
    try:
        connection.request(method, target, body=body, headers=dict(headers))
    except (BrokenPipeError, ConnectionResetError):
        if connection.sock is None or not _readable(connection.sock):
            raise


def _connect(connection: http.client.HTTPConnection, timeout: float) -> None:
    connection.timeout = timeout
    try:
        connection.connect()  # sets TCP_NODELAY: the body's send does not wait for the ACK of the headers' (Nagle)
    except TimeoutError:
        connection.close()
        raise ConnectFailed("timed out", timed_out=True) from None
    except OSError as problem:
        connection.close()
        raise ConnectFailed(_describe(problem), timed_out=False) from None


def _still_open(connection: http.client.HTTPConnection) -> bool:
    """An idle connection has nothing to read: readable means the service closed it (or broke HTTP)."""
    return connection.sock is not None and not _readable(connection.sock)


def _readable(sock: socket.socket) -> bool:
    poll = select.poll()
    poll.register(sock, select.POLLIN)
    return bool(poll.poll(0))


def _describe(problem: BaseException) -> str:
    if isinstance(problem, socket.gaierror):
        return f"the host name does not resolve ({problem.strerror})"
    return str(problem) or type(problem).__name__
