"""A download's deadline over its whole exchange, its head included. httpx's timeouts bound each network wait: an
image host that sent its answer's head a byte every two seconds (each within the wait) held the thread for good,
a worker's or the dashboard's. The watch shuts the connection's socket at the deadline; the read waiting then fails,
and the download is a timeout."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any


class ConnectionDeadline:
    """Hand `trace` to httpx as the request's "trace" extension: it watches each connection the request opens.
    A connection taken from a pool opens no connection to watch: requests watched so say `Connection: close`."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline  # time.monotonic()
        self.expired = False
        self._timers: list[threading.Timer] = []

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event != "connection.connect_tcp.complete":
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), self._expire, (sock,))
            timer.daemon = True
            timer.start()
            self._timers.append(timer)

    def _expire(self, sock: socket.socket) -> None:
        self.expired = True
        with contextlib.suppress(OSError):  # closed meanwhile
            sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        for timer in self._timers:
            timer.cancel()
