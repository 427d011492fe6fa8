"""The request line and headers of an HTTP/1.x request, read without the `email` package.

`http.server` hands every request's headers to `email.parser` (an `email.message.Message` per request): a
quarter of the stand-in's CPU in a profile. The stand-in reads three headers (Content-Length,
Transfer-Encoding, Content-Type) plus Connection and Expect, so a plain case-insensitive mapping does. The
checks and answers are http.server's: the same status codes and messages for a bad request line, an HTTP
version it cannot speak, a header line over 64 KiB or more than 100 headers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Protocol

MAX_LINE = 65536  # http.client's limit on one header line
MAX_HEADERS = 100  # http.client's limit on the number of header lines
_END = (b"\r\n", b"\n", b"")
_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]*")  # a header name as the email parser takes it: printable, no colon


class LineReader(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


class HeadError(Exception):
    """A request head the server refuses: the status, http.server's message and its explanation.

    `version`: the request's HTTP version when it was read before the refusal (the answer then has a status
    line and headers); None: answered as to HTTP/0.9, as http.server does.
    """

    def __init__(self, status: HTTPStatus, message: str, explain: str | None = None, *,
                 version: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.explain = explain
        self.version = version


class RequestHeaders:
    """Header name (any case) → value of its first occurrence, as `email.message.Message.get` answers."""

    __slots__ = ("_values",)

    def __init__(self, pairs: list[tuple[str, str]] | None = None) -> None:
        self._values: dict[str, str] = {}
        for name, value in pairs or ():
            self._values.setdefault(name.lower(), value)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._values.get(name.lower(), default)

    def __getitem__(self, name: str) -> str | None:  # Message[name]: None when absent
        return self._values.get(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


@dataclass(frozen=True)
class RequestLine:
    command: str
    path: str
    version: str  # "HTTP/1.1"; http.server's default_request_version for an HTTP/0.9 request
    keep_alive: bool  # what the version allows before the Connection header is read


def parse_request_line(line: str, *, default_version: str, protocol_version: str) -> RequestLine | None:
    """`METHOD path HTTP/x.y` (or HTTP/0.9's `GET path`); None for an empty line (the client went away).

    Raises HeadError with http.server's status and message for anything else.
    """
    words = line.split()
    if not words:
        return None
    version, keep_alive = default_version, False
    if len(words) >= 3:
        version = words[-1]
        numbers = _version_numbers(version)
        if numbers is None:
            raise HeadError(HTTPStatus.BAD_REQUEST, f"Bad request version ({version!r})")
        keep_alive = numbers >= (1, 1) and protocol_version >= "HTTP/1.1"
        if numbers >= (2, 0):
            raise HeadError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"Invalid HTTP version ({version[5:]})")
    if len(words) > 3 or len(words) < 2:
        raise HeadError(HTTPStatus.BAD_REQUEST, f"Bad request syntax ({line!r})",
                        version=version if len(words) > 3 else None)
    command, path = words[0], words[1]
    if len(words) == 2:
        keep_alive = False
        if command != "GET":
            raise HeadError(HTTPStatus.BAD_REQUEST, f"Bad HTTP/0.9 request type ({command!r})")
    if path.startswith("//"):  # as http.server does (gh-87389): never a scheme-relative URL
        path = "/" + path.lstrip("/")
    return RequestLine(command, path, version, keep_alive)


def _version_numbers(version: str) -> tuple[int, int] | None:
    """`HTTP/major.minor` as two integers (leading zeros ignored, at most 10 digits each), else None."""
    if not version.startswith("HTTP/"):
        return None
    parts = version[5:].split(".")
    if len(parts) != 2 or not all(part.isdecimal() and len(part) <= 10 for part in parts):
        return None
    return int(parts[0]), int(parts[1])


def read_headers(stream: LineReader) -> RequestHeaders:
    """Header lines up to the blank line, kept as the `email` parser behind http.server keeps them.

    A value keeps its trailing blanks; a folded line continues the value before it (after a CRLF); a line that
    is no header ends the headers that count (the lines up to the blank line are still read). Raises HeadError
    (431) for a line over MAX_LINE bytes or more than MAX_HEADERS lines, as http.server does.
    """
    pairs: list[tuple[str, str]] = []
    count = 0
    counting = True
    while True:
        raw = stream.readline(MAX_LINE + 1)
        if len(raw) > MAX_LINE:
            raise HeadError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long",
                            f"got more than {MAX_LINE} bytes when reading header line")
        count += 1
        if count > MAX_HEADERS:
            raise HeadError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers",
                            f"got more than {MAX_HEADERS} headers")
        if raw in _END:
            return RequestHeaders(pairs)
        if not counting:
            continue
        line = raw.decode("iso-8859-1").rstrip("\r\n")
        if line[:1] in (" ", "\t"):
            if pairs:
                name, value = pairs[-1]
                pairs[-1] = (name, f"{value}\r\n{line}")
            continue
        name, colon, value = line.partition(":")
        if colon and _NAME.fullmatch(name):
            pairs.append((name, value.lstrip(" \t")))
        else:
            counting = False


class LeanHeadHandler(BaseHTTPRequestHandler):
    """A BaseHTTPRequestHandler whose `parse_request` reads the head with the functions above; `self.headers`
    is then a RequestHeaders. Connection and Expect: 100-continue are honoured as http.server honours them."""

    def parse_request(self) -> bool:
        self.command = None  # type: ignore[assignment]  # http.server's marker for "no request line yet"
        self.request_version = self.default_request_version
        self.close_connection = True
        raw: bytes = self.raw_requestline  # type: ignore[attr-defined]  # set by handle_one_request, not in typeshed
        self.requestline = str(raw, "iso-8859-1").rstrip("\r\n")
        try:
            line = parse_request_line(self.requestline, default_version=self.default_request_version,
                                      protocol_version=self.protocol_version)
            if line is None:
                return False
            self.request_version = line.version
            self.close_connection = not line.keep_alive
            self.command, self.path = line.command, line.path
            self.headers = read_headers(self.rfile)  # type: ignore[assignment]  # .get is all that is used
        except HeadError as error:
            if error.version is not None:
                self.request_version = error.version
            self.send_error(error.status, error.message, error.explain)
            return False
        connection = (self.headers.get("Connection") or "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive" and self.protocol_version >= "HTTP/1.1":
            self.close_connection = False
        expect = (self.headers.get("Expect") or "").lower()
        if expect == "100-continue" and self.protocol_version >= "HTTP/1.1" and self.request_version >= "HTTP/1.1":
            return self.handle_expect_100()
        return True
