"""The stand-in reads request heads itself (windmill.simfarm.request_head): it must answer as http.server does."""

from __future__ import annotations

import socket
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest

from tests.farm_fixtures import running_farm
from windmill.catalog import load_catalog
from windmill.simfarm.request_head import LeanHeadHandler

BIG = "x" * 70_000


class _Echo:
    """Answers every request with what it understood of it: command, path, version and a few headers."""

    protocol_version = "HTTP/1.1"

    def date_time_string(self, timestamp: float | None = None) -> str:
        return "Sat, 05 Dec 2026 06:00:00 GMT"  # the two handlers' answers are compared byte for byte

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _echo(self) -> None:
        headers = self.headers  # type: ignore[attr-defined]
        seen = [f"{name}={headers.get(name)!r}" for name in
                ("content-length", "Content-Type", "TRANSFER-ENCODING", "X-Folded", "X-Dup", "X-Absent")]
        length = int(headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""  # type: ignore[attr-defined]
        text = " ".join([self.command, self.path, self.request_version, *seen,  # type: ignore[attr-defined]
                         f"body={body!r}"]).encode()
        self.send_response(200)  # type: ignore[attr-defined]
        self.send_header("Content-Length", str(len(text)))  # type: ignore[attr-defined]
        self.end_headers()  # type: ignore[attr-defined]
        self.wfile.write(text)  # type: ignore[attr-defined]

    do_GET = do_POST = do_HEAD = _echo


class _Stock(_Echo, BaseHTTPRequestHandler):
    pass


class _Lean(_Echo, LeanHeadHandler):
    pass


def _exchange(handler: type, raw: bytes) -> bytes:
    """Everything `handler` writes back for `raw` sent on one connection that the client then half-closes."""
    client, server = socket.socketpair()
    with client, server:
        client.sendall(raw)
        client.shutdown(socket.SHUT_WR)
        handler(server, ("127.0.0.1", 0), None)
        server.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := client.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


_HEAD = "POST /analyze HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 2\r\n"
CASES = {
    "keep-alive: two requests on one connection": "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
    "Connection: close ends the connection": "GET /a HTTP/1.1\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
    "Connection: Keep-Alive keeps an HTTP/1.0 one":
        "GET /a HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n",
    "HTTP/1.0 closes by default": "GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
    "Expect: 100-continue is answered first": _HEAD + "Expect: 100-Continue\r\n\r\nok",
    "Expect is ignored for HTTP/1.0": _HEAD.replace("1.1", "1.0") + "Expect: 100-continue\r\n\r\nok",
    "a body and its headers, any case": _HEAD.lower().replace("post /analyze http/1.1", "POST /analyze HTTP/1.1")
    + "\r\nok",
    "first of a repeated header, trailing blanks kept": "GET / HTTP/1.1\r\nX-Dup: one  \r\nX-Dup: two\r\n\r\n",
    "a folded header line": "GET / HTTP/1.1\r\nX-Folded: one\r\n  two\r\nX-Dup: 3\r\n\r\n",
    "a line that is no header ends the headers": "GET / HTTP/1.1\r\nX-Dup: 1\r\nno header\r\nX-Folded: 2\r\n\r\n",
    "bare LF line ends": "GET /lf HTTP/1.1\nX-Dup: 1\n\nGET /b HTTP/1.1\n\n",
    "double slash is reduced": "GET //evil.example/x HTTP/1.1\r\n\r\n",
    "a malformed request line is a 400": "GET /a b HTTP/1.1\r\n\r\n",
    "a bad version is a 400": "GET / HTTX/1.1\r\n\r\n",
    "a superscript version digit is a 400": "GET / HTTP/1.\u00b2\r\n\r\n",
    "HTTP/2 is a 505": "GET / HTTP/2.0\r\n\r\n",
    "HTTP/0.9 GET": "GET /nine\r\n\r\n",
    "HTTP/0.9 POST is a 400": "POST /nine\r\n\r\n",
    "one word is a 400": "GET\r\n\r\n",
    "an empty request line closes": "\r\n",
    "a header line over 64 KiB is a 431": f"GET / HTTP/1.1\r\nX-Big: {BIG}\r\n\r\n",
    "more than 100 header lines is a 431": "GET / HTTP/1.1\r\n" + "X-Dup: 1\r\n" * 100 + "\r\n",
    "99 header lines are fine": "GET / HTTP/1.1\r\n" + "X-Dup: 1\r\n" * 99 + "\r\n",
}


@pytest.mark.parametrize("raw", CASES.values(), ids=list(CASES))
def test_request_heads_are_answered_as_http_server_answers_them(raw: str) -> None:
    stock = _exchange(_Stock, raw.encode("iso-8859-1"))
    assert stock or raw == "\r\n"  # an answer to compare, but for the client that sent nothing
    assert _exchange(_Lean, raw.encode("iso-8859-1")) == stock


def test_the_stand_in_keeps_a_connection_until_told_to_close() -> None:
    with running_farm(load_catalog(), services=["yolov8"]) as (farm, _), \
            socket.create_connection((farm.host, farm.ports["yolov8"]), timeout=10) as connection:
        stream = connection.makefile("rb")
        for close in (False, True):
            header = "Connection: close\r\n" if close else ""
            connection.sendall(f"GET /health HTTP/1.1\r\nHost: x\r\n{header}\r\n".encode())
            assert stream.readline().startswith(b"HTTP/1.1 200")
            head = []
            while (line := stream.readline()) not in (b"\r\n", b""):
                head.append(line.lower())
            length = next(int(line.split(b":")[1]) for line in head if line.startswith(b"content-length"))
            stream.read(length)
            assert (b"connection: close\r\n" in head) is close
        assert stream.read() == b""  # closed after the answer that said so


def test_the_stand_in_answers_an_upload_that_expects_100_continue() -> None:
    with running_farm(load_catalog(), services=["yolov8"]) as (farm, _):
        url = farm.base_url("yolov8") + "/v3/analyze"
        image = (farm.index.directories[0] / "coffee.jpg").read_bytes()
        plain = httpx.post(url, files={"file": ("coffee.jpg", image, "image/jpeg")}, timeout=10)
        with socket.create_connection((farm.host, farm.ports["yolov8"]), timeout=10) as connection:
            request = httpx.Request("POST", url, files={"file": ("coffee.jpg", image, "image/jpeg")})
            body = request.read()
            head = "".join(f"{name}: {value}\r\n" for name, value in request.headers.items())
            connection.sendall(f"POST /v3/analyze HTTP/1.1\r\n{head}Expect: 100-continue\r\n\r\n".encode())
            stream = connection.makefile("rb")
            assert stream.readline() == b"HTTP/1.1 100 Continue\r\n"
            assert stream.readline() == b"\r\n"
            connection.sendall(body)
            assert stream.readline().startswith(b"HTTP/1.1 200")
            while stream.readline() not in (b"\r\n", b""):
                pass
            assert stream.read(len(plain.content)) == plain.content


def test_a_malformed_request_line_gets_a_400_from_the_stand_in() -> None:
    with running_farm(load_catalog(), services=["yolov8"]) as (farm, _), \
            socket.create_connection((farm.host, farm.ports["yolov8"]), timeout=10) as connection:
        connection.sendall(b"GET /health extra HTTP/1.1\r\n\r\n")
        assert connection.makefile("rb").readline().startswith(b"HTTP/1.1 400")

