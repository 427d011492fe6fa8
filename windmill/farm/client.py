"""The Animal Farm HTTP client: one pooled keep-alive connection set for every service.

Requests follow the contract (spec/animal-farm-api.md §2, §6): POST multipart `file` with a
filename carrying the right extension by default, or `GET ?url=` / `GET ?file=` (URL-encoded) for services whose
catalog `request_mode` is "url" / "file"; they travel over windmill.farm.transport (http.client), whose CPU per
request is a third of httpx's. Each service's timeout comes from the catalog, and so does its
`max_concurrency`: requests to a limited service wait for a place (windmill.farm.limits), so a process
must call every service through one client. Answers are read as a stream and refused beyond a size cap,
then normalised (windmill.farm.normalize). Every failure is a `ServiceCallError` whose
`kind`/`retryable` say what happened; retries are the worker runtime's business, except that a worker's client
waits for a service that is down (windmill.farm.outages).
"""

from __future__ import annotations

import http.client
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode

import windmill
from windmill.catalog import Catalog, Service
from windmill.farm.errors import ServiceCallError
from windmill.farm.limits import ConcurrencyLimits
from windmill.farm.multipart import multipart_body
from windmill.farm.normalize import (
    describe_body,
    health_detail,
    normalize_answer,
    normalize_score_answer,
    parse_answer_json,
)
from windmill.farm.outages import ServiceOutages
from windmill.farm.transport import ConnectFailed, ExchangeFailed, ServiceConnections
from windmill.images.load import check_image_url
from windmill.images.validate import PreparedImage

MIB = 1024 * 1024
# Idle keep-alive connections kept per service: more than a process ever has handler threads, so a burst's
# connections all stay open for the next one.
DEFAULT_MAX_CONNECTIONS = 256
# The largest real answer (metadata with EXIF) is well under 1 MiB; 8 MiB matches the services'
# own image limit and keeps a runaway body from filling a worker's memory.
DEFAULT_MAX_BODY_BYTES = 8 * MIB
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_HEALTH_TIMEOUT_S = 10.0
_ERROR_BODY_BYTES = 64 * 1024
_READ_BYTES = 64 * 1024
_HEADERS = {"User-Agent": f"windmill/{windmill.__version__}"}
# Told of every analyze/score call: (service, seconds, outcome), outcome "success" or a ServiceCallError kind.
# A plain callable keeps the client free of any metrics library.
CallObserver = Callable[[str, float, str], None]
# 400 messages of the contract (§2.4) that mean "this image/URL is refused", not "bad request".
_REJECTION_HINTS = (
    "file too large",
    "file type not allowed",
    "no file selected",
    "url does not point to an image",
    "invalid url",
    "downloaded file too large",
    "failed to download",
    "failed to load image",
    "failed to process",
    "file not found",
    "cannot identify image",
)
# clip and xception (two-stage) answer a `?file=` that does not exist with HTTP 500 "Failed to load image file: File
# not found: …" where the others answer 400 "File not found" (§2.4, §3.5): a refusal no retry changes, not a fault.
_MISSING_FILE_500 = "File not found: "


@dataclass(frozen=True)
class ServiceAnswer:
    """A successful call: `data` is the normalised answer to store in results.data."""

    service: str
    data: dict[str, Any] = field(repr=False)
    processing_time: float  # wall-clock seconds measured by the client, request to last byte
    status_code: int


@dataclass(frozen=True)
class HealthResult:
    """One `/health` probe: only the status code is reliable across services (contract §2.8)."""

    service: str
    url: str
    ok: bool
    status_code: int | None
    latency_s: float
    detail: str


@dataclass(frozen=True)
class _Exchange:
    status_code: int
    content_type: str
    body: bytes
    elapsed: float


@dataclass(frozen=True)
class _Request:
    method: str
    target: str  # path and query
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


class FarmClient:
    """Calls Animal Farm services; thread-safe. Each service gets its own keep-alive connections: one pool
    for all of them would make every request of every thread lock the same pool. The catalog's
    per-service `max_concurrency` holds across every thread that calls through this client (`limits`)."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        allow_private_urls: bool = False,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        health_timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S,
        observer: CallObserver | None = None,
        limits: ConcurrencyLimits | None = None,
        outages: ServiceOutages | None = None,
    ) -> None:
        self.catalog = catalog
        self.limits = limits or ConcurrencyLimits(catalog.services)
        self.outages = outages  # None: a call to a service that is down fails at once (a command, not a worker)
        self.observer = observer
        self.allow_private_urls = allow_private_urls
        self.max_body_bytes = max_body_bytes
        self.connect_timeout_s = connect_timeout_s
        self.health_timeout_s = health_timeout_s
        self._max_connections = max_connections
        # One multipart boundary for all uploads of this client rather than one per request: a service's
        # multipart parser may compile a pattern per boundary (Python's email parser does, behind http.server;
        # so does werkzeug's), and a repeated boundary is compiled once. Random, so no image holds it.
        self._boundary = f"windmill-{uuid.uuid4().hex}"
        self._upload_headers = {"Content-Type": f"multipart/form-data; boundary={self._boundary}", **_HEADERS}
        self._connections: dict[tuple[str, str, int], ServiceConnections] = {}
        self._connections_lock = threading.Lock()

    def _http(self, service: Service) -> ServiceConnections:
        address = (service.name, service.host, service.port)
        connections = self._connections.get(address)
        if connections is None:
            with self._connections_lock:
                connections = self._connections.get(address)
                if connections is None:
                    connections = self._connections[address] = ServiceConnections(
                        service.host, service.port, max_idle=self._max_connections)
        return connections

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        with self._connections_lock:
            pools, self._connections = list(self._connections.values()), {}
        for pool in pools:
            pool.close()
        self.limits.close()

    def __enter__(self) -> FarmClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # -- calls ----------------------------------------------------------------------------------

    def analyze(
        self,
        service: Service | str,
        image: PreparedImage | None = None,
        *,
        image_url: str | None = None,
        image_path: str | None = None,
        extra: Mapping[str, Any] | None = None,
        clamp_to_image: bool = True,
    ) -> ServiceAnswer:
        """Run one service on one image and return its normalised answer.

        The service's `request_mode` picks the input (Service.input_for): "upload" sends `image`, "url" sends
        `image_url`, "file" sends `image_path` (which the service reads on its own disk); an image without what
        the mode needs is uploaded, or without bytes given, sent by its URL. `extra` adds query parameters in every
        mode, e.g. colors `regions` (which it reads from the query string only, spec §3.13), ollama `prompt`. Boxes
        are clamped to the uploaded image unless `clamp_to_image` is false (a crop's answer, clamped once moved into
        the whole image).
        """
        target = self._resolve(service)
        request, uploaded = self._image_request(target, image, image_url, image_path, _parameters(extra))
        image_size = image.size if uploaded and image is not None else None

        def attempt() -> ServiceAnswer:
            with self.limits.place(target.name), self._observed(target.name):
                exchange = self._call(target, request)
                payload, fit_as_read = self._payload(target, exchange)
                data = normalize_answer(target.name, payload, image_size=image_size,
                                        status_code=exchange.status_code, clamp=clamp_to_image,
                                        fit_as_read=fit_as_read)
            return ServiceAnswer(target.name, data, exchange.elapsed, exchange.status_code)

        return self._when_up(target, attempt)

    def score_answer(self, service: Service | str, image: PreparedImage | None, caption: str, *,
                     image_url: str | None = None, image_path: str | None = None) -> ServiceAnswer:
        """Caption scoring (CLIP `/score`, spec §3.4): the caption beside the image as `analyze` gives it. The CLIP
        of df57b25 takes only `?file=` and `?url=`; the clip-score service of 2026 takes uploads too."""
        target = self._resolve(service)
        if not caption or not caption.strip():
            raise ServiceCallError("cannot score an empty caption", kind="rejected", service=target.name)
        request, _ = self._image_request(target, image, image_url, image_path, {}, form={"caption": caption})

        def attempt() -> ServiceAnswer:
            with self.limits.place(target.name), self._observed(target.name):
                exchange = self._call(target, request)
                payload, fit_as_read = self._payload(target, exchange)
                data = normalize_score_answer(target.name, payload, status_code=exchange.status_code,
                                              fit_as_read=fit_as_read)
            return ServiceAnswer(target.name, data, exchange.elapsed, exchange.status_code)

        return self._when_up(target, attempt)

    def score(self, service: Service | str, image: PreparedImage | None, caption: str, *,
              image_url: str | None = None, image_path: str | None = None) -> float:
        """The CLIP similarity of `caption` to the image (cosine, typically 0.15–0.35)."""
        answer = self.score_answer(service, image, caption, image_url=image_url, image_path=image_path)
        return float(answer.data["similarity_score"])

    def health(self, service: Service | str) -> HealthResult:
        """Probe `GET /health`; never raises: a failure is a HealthResult with ok=False. Several services run an
        inference in /health (pose on its one shared graph), so a probe takes a place like any request."""
        target = self._resolve(service)
        with self.limits.place(target.name):
            return self._health(target)

    def _health(self, target: Service) -> HealthResult:
        url = f"{target.base_url}/health"
        started = time.monotonic()
        try:
            with self._http(target).exchange("GET", "/health", body=None, headers=_HEADERS,
                                             connect_timeout=min(self.health_timeout_s, self.connect_timeout_s),
                                             timeout=self.health_timeout_s) as response:
                body, _complete = _read(response, _ERROR_BODY_BYTES, deadline=started + self.health_timeout_s)
                status = response.status
                content_type = response.getheader("content-type", "")
        except (ConnectFailed, ExchangeFailed) as problem:
            failure = _transport_error(target, problem, timeout_s=self.health_timeout_s, elapsed=None)
            return HealthResult(target.name, url, False, None, time.monotonic() - started, failure.reason)
        except (UnicodeError, ValueError) as problem:  # a host name http.client cannot put in a request
            return HealthResult(target.name, url, False, None, 0.0, f"invalid service URL: {problem}")
        except _Overdue:
            detail = f"no complete answer within {self.health_timeout_s:g} s"
            return HealthResult(target.name, url, False, None, time.monotonic() - started, detail)
        latency = time.monotonic() - started
        detail = health_detail(body, content_type)
        if target.name == "blip" and status == 500:  # its /health is broken at df57b25, fixed the next day
            detail = f"broken at df57b25, 500 always (spec §2.8): try an analyze; {detail}"
        return HealthResult(target.name, url, status == 200, status, latency, detail)

    # -- internals ------------------------------------------------------------------------------

    def _when_up(self, service: Service, attempt: Callable[[], ServiceAnswer]) -> ServiceAnswer:
        """`attempt`, through the process's outages when it has them: a call to a service that is down waits."""
        return attempt() if self.outages is None else self.outages.call(service.name, attempt)

    def stop_waiting(self) -> None:
        """End the waits of calls for services that are down (the worker stops): each gives its attempt back."""
        if self.outages is not None:
            self.outages.stop()

    @contextmanager
    def _observed(self, service: str) -> Iterator[None]:
        """Time the block and tell the observers its outcome. Only service outcomes count: a refusal before
        any request (e.g. a private image URL) is not a service call."""
        observer = self.observer
        if observer is None:
            yield
            return
        started = time.monotonic()
        try:
            yield
        except ServiceCallError as failure:
            observer(service, time.monotonic() - started, failure.kind)
            raise
        observer(service, time.monotonic() - started, "success")

    def _resolve(self, service: Service | str) -> Service:
        return service if isinstance(service, Service) else self.catalog[service]

    def _image_request(self, service: Service, image: PreparedImage | None, image_url: str | None,
                       image_path: str | None, params: Mapping[str, str], *, form: Mapping[str, str] | None = None
                       ) -> tuple[_Request, bool]:
        """The request that gives `service` the image as its request_mode asks, and whether it is an upload. `params`
        travel in the query string; `form` in an upload's form, else in the query string too (the score's caption)."""
        mode = service.input_for(image_path, image_url)
        if mode == "upload" and image is None:
            if not image_url:
                raise ValueError(f"calling {service.name} needs an image or an image_url")
            mode = "url"
        if mode == "upload":
            assert image is not None
            return self._upload_request(service, image, params, form or {}), True
        if mode == "url":
            assert image_url is not None
            # The service fetches the URL itself: refuse what the image loader would refuse.
            check_image_url(image_url, allow_private_urls=self.allow_private_urls)
            query = {"url": image_url, **params, **(form or {})}
        else:
            query = {"file": str(image_path), **params, **(form or {})}
        return _Request("GET", _with_query(service.endpoint, query), headers=_HEADERS), False

    def _upload_request(self, service: Service, image: PreparedImage, params: Mapping[str, str],
                        form: Mapping[str, str]) -> _Request:
        body = multipart_body(self._boundary, form, image.data, filename=image.filename, mime=image.mime)
        return _Request("POST", _with_query(service.endpoint, params), body, self._upload_headers)

    def _call(self, service: Service, request: _Request) -> _Exchange:
        started = time.monotonic()
        deadline = started + service.timeout_s
        try:
            with self._http(service).exchange(request.method, request.target, body=request.body,
                                              headers=request.headers, timeout=service.timeout_s,
                                              connect_timeout=min(service.timeout_s, self.connect_timeout_s)
                                              ) as response:
                success = 200 <= response.status < 300
                limit = self.max_body_bytes if success else _ERROR_BODY_BYTES
                declared = response.getheader("content-length", "")
                if success and declared.isdigit() and int(declared) > limit:
                    raise _malformed(f"body of {int(declared)} bytes is over the {_size(limit)} limit", service,
                                     response.status, started)
                body, complete = _read(response, limit, deadline=deadline)
                if success and not complete:
                    raise _malformed(f"body is over the {_size(limit)} limit", service, response.status, started)
                return _Exchange(response.status, response.getheader("content-type", ""), body,
                                 time.monotonic() - started)
        except (ConnectFailed, ExchangeFailed) as problem:
            raise _transport_error(
                service, problem, timeout_s=service.timeout_s, elapsed=time.monotonic() - started
            ) from None
        except _Overdue:
            raise ServiceCallError(
                f"no complete answer within {service.timeout_s:g} s",
                kind="timeout",
                service=service.name,
                elapsed=time.monotonic() - started,
            ) from None

    def _payload(self, service: Service, exchange: _Exchange) -> tuple[Any, bool]:
        """The answer's JSON, and whether it is fit for jsonb as read (parse_answer_json)."""
        status = exchange.status_code
        if not 200 <= status < 300:
            raise _status_error(service, exchange)
        try:
            return parse_answer_json(exchange.body)
        except ValueError as problem:
            described = describe_body(exchange.body, exchange.content_type)
            raise ServiceCallError(
                f"malformed answer: {problem}: {described}",
                kind="malformed",
                service=service.name,
                status_code=status,
                elapsed=exchange.elapsed,
            ) from None


def check_services(
    catalog: Catalog, client: FarmClient, *, services: Iterable[Service] | None = None, max_parallel: int = 8
) -> list[HealthResult]:
    """Probe `/health` of every catalog service (or the given ones) in parallel, in catalog order."""
    targets = list(catalog.services if services is None else services)
    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(targets)))) as pool:
        return list(pool.map(client.health, targets))


def format_health_table(results: Iterable[HealthResult]) -> str:
    """The `windmill-cli farm check` table: one row per service and a summary line."""
    rows = [("SERVICE", "URL", "STATUS", "HTTP", "LATENCY", "DETAIL")]
    listed = list(results)
    for result in listed:
        rows.append(
            (
                result.service,
                result.url,
                "ok" if result.ok else "DOWN",
                "-" if result.status_code is None else str(result.status_code),
                f"{result.latency_s * 1000:.0f} ms",
                _clip(result.detail, 60),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    healthy = sum(result.ok for result in listed)
    lines.append(f"{healthy} of {len(listed)} services healthy")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


class _Overdue(Exception):
    """The body kept trickling past the call's deadline."""


def _read(response: http.client.HTTPResponse, limit: int, *, deadline: float) -> tuple[bytes, bool]:
    """Up to `limit` bytes of the body; complete=False when there was more. Each read returns what has arrived
    (read1), so a body trickling in is caught at its deadline, not only when a read waits too long."""
    chunks: list[bytes] = []
    received = 0
    try:
        while chunk := response.read1(_READ_BYTES):
            received += len(chunk)
            if received > limit:
                chunks.append(chunk[: len(chunk) - (received - limit)])
                return b"".join(chunks), False
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise _Overdue
    except TimeoutError:  # the transport's deadline, met waiting for the next bytes (farm/transport.py)
        raise _Overdue from None
    return b"".join(chunks), True


def _with_query(endpoint: str, query: Mapping[str, str]) -> str:
    return f"{endpoint}?{urlencode(query, quote_via=quote)}" if query else endpoint


def _parameters(extra: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(key): str(value) for key, value in (extra or {}).items() if value is not None}


def _status_error(service: Service, exchange: _Exchange) -> ServiceCallError:
    status = exchange.status_code
    described = describe_body(exchange.body, exchange.content_type)
    message = f"HTTP {status}: {described}"
    if status == 429:
        kind = "http_429"
    elif status == 408:
        kind = "timeout"
    elif status == 500 and _MISSING_FILE_500 in described:
        kind = "rejected"
    elif status >= 500:
        kind = "http_5xx"
    elif status == 413 or (status == 400 and any(hint in described.lower() for hint in _REJECTION_HINTS)):
        kind = "rejected"
    elif 400 <= status < 500:
        kind = "http_4xx"
    else:
        kind = "http_other"
    return ServiceCallError(message, kind=kind, service=service.name, status_code=status, elapsed=exchange.elapsed)


def _transport_error(
    service: Service, problem: ConnectFailed | ExchangeFailed, *, timeout_s: float, elapsed: float | None
) -> ServiceCallError:
    if isinstance(problem, ConnectFailed) and problem.timed_out:
        kind, message = "connect", f"no connection to {service.base_url} within the connect timeout"
    elif isinstance(problem, ConnectFailed):
        kind, message = "connect", f"cannot connect to {service.base_url}: {problem}"
    elif problem.timed_out:
        kind, message = "timeout", f"no answer within {timeout_s:g} s"
    else:
        kind, message = "network", f"connection to {service.base_url} failed: {problem}"
    return ServiceCallError(message, kind=kind, service=service.name, elapsed=elapsed)


def _malformed(problem: str, service: Service, status_code: int, started: float) -> ServiceCallError:
    """A successful status with an answer that cannot be used."""
    return ServiceCallError(f"malformed answer: {problem}", kind="malformed", service=service.name,
                            status_code=status_code, elapsed=time.monotonic() - started)


def _size(count: int) -> str:
    return f"{count / MIB:g} MiB" if count >= MIB else f"{count} bytes"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
