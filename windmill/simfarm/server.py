"""The HTTP side: one threaded stdlib server per service port, all in one process, and `SimFarm` to run them."""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Sequence
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from windmill.catalog import Catalog, Service
from windmill.errors import WindmillError
from windmill.simfarm import contract
from windmill.simfarm.annotations import AnnotationIndex
from windmill.simfarm.answers import Answerer, Options
from windmill.simfarm.capacity import LoadStats, ServiceLoad
from windmill.simfarm.contract import MAX_IMAGE_BYTES, Profile, encode, profile_for
from windmill.simfarm.decoding import Undecodable
from windmill.simfarm.faults import Decision, Fault, FaultPlan, FaultRates
from windmill.simfarm.inputs import (
    ContractError,
    Downloader,
    MalformedRequest,
    Picture,
    RequestData,
    first_values,
    parse_body,
    resolve,
    resolve_for_score,
    undecodable,
)
from windmill.simfarm.latency import LatencyProfile
from windmill.simfarm.memory import keep_freed_memory
from windmill.simfarm.request_head import LeanHeadHandler
from windmill.stopping import SIGNAL_SLICE_S

log = logging.getLogger(__name__)

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
JSON_TYPE = "application/json"
HTML_TYPE = "text/html; charset=utf-8"
MAX_BODY_BYTES = 64 * 1024 * 1024  # beyond this the connection is refused outright, on every service
IDLE_TIMEOUT_S = 75.0  # an idle keep-alive connection is closed after this
HOLD_FACTOR = 10.0  # a "timeout" fault holds the request for 10× the service's client timeout
_GET = frozenset({"GET", "HEAD"})
_GET_POST = frozenset({"GET", "HEAD", "POST"})
# Where the services read their extra parameters: colors `?regions=` from the query string only (spec §3.13); ollama
# its prompt, model and temperature from the query string or a form field (§2.2).
_QUERY_PARAMS = ("regions",)
_PARAMS = ("prompt", "model", "temperature")


def routes_for(profile: Profile) -> dict[str, tuple[str, frozenset[str]]]:
    """Path → (route, methods) as §2.1 lists them for this service."""
    table = {"/analyze": ("analyze", _GET_POST), "/v3/analyze": ("analyze", _GET_POST), "/health": ("health", _GET)}
    if not profile.two_stage:
        table["/v2/analyze"] = ("v2_url", _GET)
        table["/v2/analyze_file"] = ("v2_file", _GET)
    if profile.scores:
        table.update({"/score": ("score", _GET_POST), "/v3/score": ("score", _GET_POST),
                      "/v2/analyze/": ("v2_url", _GET), "/v2/analyze_file/": ("v2_file", _GET)})
    return table


class _ServiceServer(ThreadingHTTPServer):
    """One service's port; remembers its open connections so `stop` can close idle keep-alives."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], farm: SimFarm, service: Service, profile: Profile) -> None:
        self.farm = farm
        self.service = service
        self.profile = profile
        self.routes = routes_for(profile)
        self.hold_s = farm.timeout_hold_s if farm.timeout_hold_s is not None else HOLD_FACTOR * service.timeout_s
        self.load = farm.loads[service.name]
        self._open: dict[socket.socket, threading.Thread] = {}
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall without DNS; the name is unused.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def track(self, connection: socket.socket) -> None:
        with self._open_lock:
            self._open[connection] = threading.current_thread()

    def untrack(self, connection: socket.socket) -> None:
        with self._open_lock:
            self._open.pop(connection, None)

    def close_connections(self, join_timeout_s: float = 2.0) -> None:
        with self._open_lock:
            open_now = list(self._open.items())
        for connection, _ in open_now:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)
        for _, thread in open_now:
            thread.join(join_timeout_s)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-answer is routine under load; keep it out of stderr.
        log.debug("connection error from %s", client_address, exc_info=True, extra={"action": "simfarm_conn_error"})


class _Handler(LeanHeadHandler):  # the head read without the email package (request_head)
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections, as httpx does
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server_version = "Werkzeug/3.1.3"
    sys_version = "Python/3.11"
    timeout = IDLE_TIMEOUT_S
    server: _ServiceServer

    def setup(self) -> None:
        self._answered: Callable[[], None] | None = None  # ends the request's hold (ServiceLoad.holding)
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        if log.isEnabledFor(logging.DEBUG):  # called for every answer: format only when it will be written
            log.debug("%s %s", self.server.service.name, format % args)

    _date: tuple[int, str] = (0, "")  # the Date header of the current second, shared by every request

    def date_time_string(self, timestamp: float | None = None) -> str:
        """http.server formats the Date header anew for each answer (email.utils, a few % of the stand-in's
        CPU); within one second it is the same text."""
        if timestamp is not None:
            return super().date_time_string(timestamp)
        second = int(time.time())
        cached = _Handler._date
        if cached[0] != second:
            cached = _Handler._date = (second, super().date_time_string(second))
        return cached[1]

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    # -- plumbing -------------------------------------------------------------------------------------

    def _send(self, status: int, content_type: str, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        # Headers and body in one write: one segment per answer instead of two.
        # _headers_buffer: http.server's own buffer (CPython has it, typeshed does not list it).
        self._headers_buffer.append(b"\r\n")  # type: ignore[attr-defined]  # see above
        if self.command != "HEAD":
            self._headers_buffer.append(body)  # type: ignore[attr-defined]  # see above
        if self._answered is not None:
            self._answered()  # the answer is complete: the service no longer holds the request while it is sent
        self.flush_headers()

    def _send_json(self, status: int, document: Any) -> None:
        self._send(status, JSON_TYPE, encode(document))

    def _read_body(self) -> bytes | None:
        """The request body, or None when it is too large to take (the connection is then closed)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            return None
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes | None:
        chunks = bytearray()
        while True:
            size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                self.close_connection = True
                return None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(chunks)
            if len(chunks) + size > MAX_BODY_BYTES:
                self.close_connection = True
                return None
            chunks += self.rfile.read(size)
            self.rfile.readline(8)

    # -- routing ----------------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        body = self._read_body()
        route = self.server.routes.get(split.path)
        if route is None:
            self._send(404, HTML_TYPE, contract.NOT_FOUND_HTML)
            return
        name, methods = route
        allowed = ", ".join(sorted(methods | {"OPTIONS"}))
        if method == "OPTIONS":  # Flask answers OPTIONS itself for every route
            self._send(200, HTML_TYPE, b"", [("Allow", allowed)])
            return
        if method not in methods:
            self._send(405, HTML_TYPE, contract.METHOD_NOT_ALLOWED_HTML, [("Allow", allowed)])
            return
        if name == "health":
            self._health()
            return
        if body is None:  # over MAX_BODY_BYTES
            self._send_json(413, contract.legacy_error("File too large"))
            return
        with self.server.load.holding() as answered:
            self._answered = answered
            try:
                self._call(name, method, split.query, body)
            finally:
                self._answered = None

    def _call(self, name: str, method: str, query_string: str, body: bytes) -> None:
        """An analyze or score request: its turn and service time, its fault if one is drawn, else its answer."""
        profile = self.server.profile
        if not self.server.load.serve(self.server.farm.stopping):
            self.close_connection = True  # the farm is stopping: hang up
            return
        if self._inject_fault(profile, name == "score"):
            return
        if method == "POST" and profile.legacy_handlers and len(body) > MAX_IMAGE_BYTES:
            self._send_json(413, contract.legacy_error("File too large"))  # Flask MAX_CONTENT_LENGTH
            return
        query = first_values(query_string)
        if name == "v2_url":
            query = {"url": query.get("image_url", "")}
        elif name == "v2_file":
            query = {"file": query.get("file_path", "")}
        request = RequestData(query=query)
        if method == "POST":
            try:
                parsed = parse_body(self.headers.get("Content-Type", ""), body)
            except MalformedRequest:
                if profile.legacy_handlers:
                    self._send_json(400, contract.legacy_error("Bad request"))
                    return
                parsed = RequestData()
            request.fields, request.files, request.json_body = parsed.fields, parsed.files, parsed.json_body
        if name == "score":
            self._score(profile, method, request)
        else:
            self._analyze(profile, method if method != "HEAD" else "GET", request)

    def _health(self) -> None:
        farm, profile = self.server.farm, self.server.profile
        if profile.analyzer == "blip" and farm.broken_blip_health:
            self._send_json(500, contract.legacy_error("Internal server error"))  # df57b25's broken /health
            return
        self._send_json(200, profile.health)

    def _analyze(self, profile: Profile, method: str, request: RequestData) -> None:
        farm = self.server.farm
        picture: Picture | None = None
        try:
            picture = resolve(profile, method, request, farm.downloader)
            params = {name: value for name in _PARAMS if (value := request.param(name)) is not None}
            params.update((name, value) for name in _QUERY_PARAMS if (value := request.query.get(name)))
            self._send(200, JSON_TYPE, farm.answerer.analyze(profile, picture, params))
        except ContractError as failure:
            self._send_json(failure.status, contract.error(profile, failure.message))
        except Undecodable as failure:
            assert picture is not None
            mapped = undecodable(profile, picture.source, str(failure))
            self._send_json(mapped.status, contract.error(profile, mapped.message))
        except Exception as failure:  # the services' catch-all (§2.4)
            log.exception("simulated %s failed", profile.key, extra={"action": "simfarm_internal_error"})
            if profile.legacy_handlers:
                self._send_json(500, contract.legacy_error("Internal server error"))
            else:
                self._send_json(500, contract.error(profile, f"Internal error: {failure}"))

    def _score(self, profile: Profile, method: str, request: RequestData) -> None:
        farm = self.server.farm
        caption = request.param("caption")
        if caption is None or not caption.strip():
            self._send_json(400, contract.score_error("Must provide non-empty caption string"))
            return
        try:
            picture = resolve_for_score(profile, method, request, farm.downloader, uploads=farm.score_uploads)
            self._send(200, JSON_TYPE, farm.answerer.score(profile, picture, caption))
        except ContractError as failure:
            self._send_json(failure.status, contract.score_error(failure.message))
        except Undecodable as failure:
            self._send_json(500, contract.score_error(f"Similarity computation failed: {failure}"))

    # -- faults -----------------------------------------------------------------------------------------

    def _inject_fault(self, profile: Profile, scoring: bool) -> bool:
        """Apply this request's fault; True when the request has been dealt with."""
        farm = self.server.farm
        decision: Decision = farm.plan.decide(profile.key)
        if decision.fault is Fault.NONE:
            return False
        if decision.fault is Fault.TIMEOUT:
            farm.stopping.wait(self.server.hold_s)  # then hang up without an answer
            self.close_connection = True
        elif decision.fault is Fault.ERROR:
            if scoring:
                document = contract.score_error("Internal error: simulated failure")
            elif profile.legacy_handlers and decision.variant < 0.5:
                document = contract.legacy_error("Internal server error")
            else:
                document = contract.error(profile, "Internal error: simulated failure")
            self._send_json(500, document)
        elif decision.variant < 0.5:
            # A body cut off mid-way: declared JSON, not parseable.
            whole = encode(contract.success(profile, [], 0.001))
            self._send(200, JSON_TYPE, whole[: len(whole) // 2])
        else:
            self._send(500, HTML_TYPE, contract.PROXY_ERROR_HTML)
        return True


class SimFarm:
    """Every selected catalog service, simulated on its port (+ offset), in one process.

    Usage: `with SimFarm(load_catalog(), port_offset=1000) as farm: httpx.get(farm.base_url("yolov8") + ...)`.
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        services: list[str] | None = None,
        host: str = "127.0.0.1",
        port_offset: int = 0,
        latency_ms: float = 0.0,
        error_rate: float = 0.0,
        timeout_rate: float = 0.0,
        malformed_rate: float = 0.0,
        seed: int = 0,
        annotation_dirs: list[Path] | None = None,
        timeout_hold_s: float | None = None,
        broken_blip_health: bool = False,
        color_systems: tuple[str, ...] = ("copic",),
        metadata_reencode: bool = False,
        shiny_rate: float = 0.0,
        latency_profile: LatencyProfile | None = None,
        cache: bool = True,
        score_uploads: bool = False,  # /score takes an upload too, as the clip-score service of 2026 does
    ) -> None:
        names = list(dict.fromkeys(services if services is not None else catalog.names))
        self.services: dict[str, Service] = {name: catalog[name] for name in names}
        self.profiles: dict[str, Profile] = {name: profile_for(name) for name in names}
        self.host = host
        self.ports: dict[str, int] = {name: service.port + port_offset for name, service in self.services.items()}
        taken: dict[int, str] = {}
        for name, port in self.ports.items():
            if not 0 < port < 65536:
                raise WindmillError(f"service {name} would listen on port {port}, outside 1–65535; adjust the offset")
            if port in taken:
                raise WindmillError(f"services {taken[port]} and {name} both want port {port}")
            taken[port] = name
        unknown_systems = [s for s in color_systems if s not in ("copic", "prismacolor")]
        if unknown_systems or not color_systems:
            raise WindmillError(f"colour systems must be copic and/or prismacolor, got {', '.join(color_systems)}")
        if latency_profile is not None and latency_ms:
            raise WindmillError("a fixed latency (--latency-ms) and a latency profile (--latency-profile) exclude "
                               "each other")
        self.latency = latency_profile or LatencyProfile.constant(latency_ms)
        self.loads = {name: ServiceLoad(name, self.latency.timing(name), seed=seed) for name in names}
        self.rates = FaultRates(error_rate, timeout_rate, malformed_rate)
        self.plan = FaultPlan(self.rates, seed)
        self.timeout_hold_s = timeout_hold_s
        self.broken_blip_health, self.score_uploads = broken_blip_health, score_uploads
        self.index = AnnotationIndex(annotation_dirs if annotation_dirs is not None else [SAMPLES_DIR])
        self.answerer = Answerer(self.index, Options(tuple(color_systems), metadata_reencode, shiny_rate), cache=cache)
        self.downloader = Downloader()
        self.stopping = threading.Event()
        self._servers: dict[str, _ServiceServer] = {}
        self._threads: list[threading.Thread] = []

    def load_stats(self) -> dict[str, LoadStats]:
        """Per service: requests held now and at most at once, the line in front of its capacity."""
        return {name: load.stats() for name, load in self.loads.items()}

    def base_url(self, service: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.ports[service]}"

    def start(self) -> None:
        """Bind every port and serve in background threads; a taken port is a WindmillError."""
        if self._servers:
            return
        self.index.scan(strict=True)
        keep_freed_memory()  # process-wide: answers reuse freed heap instead of faulting fresh pages in (memory.py)
        self.stopping.clear()
        servers: dict[str, _ServiceServer] = {}
        for name, service in self.services.items():
            try:
                servers[name] = _ServiceServer((self.host, self.ports[name]), self, service, self.profiles[name])
            except OSError as error:
                for server in servers.values():
                    server.server_close()
                raise WindmillError(
                    f"cannot serve {name} on {self.host}:{self.ports[name]} ({error.strerror or error}); "
                    "stop whatever holds that port or choose another port offset"
                ) from None
        self._servers = servers
        for name, server in servers.items():
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                      name=f"simfarm-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("simfarm serving %d services (%d annotated images)", len(servers), len(self.index),
                 extra={"action": "simfarm_started"})

    def stop(self) -> None:
        """Stop serving: release held requests, close every port and connection, join the threads."""
        if not self._servers:
            return
        self.stopping.set()
        closers = [threading.Thread(target=server.shutdown) for server in self._servers.values()]
        for closer in closers:
            closer.start()
        for closer in closers:
            closer.join()
        for server in self._servers.values():
            server.server_close()
            server.close_connections()
        for thread in self._threads:
            thread.join()
        self._servers, self._threads = {}, []
        self.downloader.close()
        log.info("simfarm stopped", extra={"action": "simfarm_stopped"})

    def __enter__(self) -> SimFarm:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """For the CLI: serve until SIGINT or SIGTERM, then stop (previous signal handlers restored)."""
        self.start()
        # Not an Event: its set() in the handler would wait for the lock that the interrupted wait may hold.
        # SimpleQueue.put is reentrant (windmill.stopping.stop_on_signals).
        received: queue.SimpleQueue[int] = queue.SimpleQueue()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            received.put(signum)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while True:  # in slices, for a signal another thread takes (windmill.stopping.SIGNAL_SLICE_S)
                with contextlib.suppress(queue.Empty):
                    received.get(timeout=SIGNAL_SLICE_S)
                    break
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()
