"""`windmill-cli web`: a read-only dashboard (Flask and Jinja2, served by waitress;
`pip install 'windmill-pipeline[web]'`): the overview `status` shows, a gallery of thumbnails with their
consensus, and each image with its boxes, faces and poses drawn over it, its consensus and every answer. It
reads as the monitor role can (deploy/roles.sql)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from windmill.catalog import Catalog
from windmill.db.connect import Database
from windmill.errors import WindmillError
from windmill.monitor import RabbitMQManagement
from windmill.settings import Settings

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'windmill-pipeline[web]'"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
THREADS = 8


@dataclass
class RunningDashboard:
    """A dashboard served from a background thread (tests; `serve` runs one in the foreground)."""

    server: Any
    thread: threading.Thread
    closing: threading.Event

    @property
    def url(self) -> str:
        host, port = self.server.effective_host, self.server.effective_port
        return f"http://{'[' + host + ']' if ':' in str(host) else host}:{port}"

    def close(self) -> None:
        """Stop listening, close open (keep-alive) connections, stop the handler threads."""
        self.closing.set()
        self.server.close()
        for channel in list(self.server._map.values()):
            channel.close()
        self.server.task_dispatcher.shutdown()
        self.thread.join(timeout=10)


def _require_web() -> None:
    try:
        import flask  # noqa: F401
        import waitress  # noqa: F401
    except ImportError:
        raise WindmillError(f"the dashboard needs Flask and waitress: {INSTALL_HINT}") from None


def _serve(server: Any, closing: threading.Event) -> None:
    """Run the server's loop. close() shuts its sockets from another thread, and the loop may be inside select()
    on them at that moment (EBADF): once closing, that is how the loop ends, not a failure."""
    try:
        server.run()
    except OSError:
        if not closing.is_set():
            raise


@contextmanager
def running_dashboard(settings: Settings, catalog: Catalog, database: Database, *, host: str = DEFAULT_HOST,
                      port: int = DEFAULT_PORT, allow_actions: bool = False,
                      gallery_page: int | None = None) -> Iterator[RunningDashboard]:
    """Serve the dashboard for as long as the block runs (port 0: any free port, see `.url`)."""
    _require_web()
    from waitress.server import create_server

    from windmill.web.app import create_app, loopback_hosts
    from windmill.web.data import Dashboard

    rabbitmq = RabbitMQManagement.configured(settings.amqp_url, settings.amqp_management_url,
                                             [service.queue_name for service in catalog.services])
    # Checked on checkout: a page has no retry, so a connection the server closed (a restart, a terminated
    # backend) would be a 503 for the person looking; a round trip is nothing beside a page.
    with database.pool(min_size=1, max_size=THREADS, name="web", checked=True) as pool:
        dashboard = Dashboard(settings, catalog, pool, rabbitmq=rabbitmq,
                              **({"gallery_page": gallery_page} if gallery_page else {}))
        # On a loopback address the Host header must name this server (DNS rebinding); filled in once bound.
        hosts: set[str] | None = set() if loopback_hosts(host, port) is not None else None
        app = create_app(dashboard, allow_actions=allow_actions, allowed_hosts=hosts)
        try:
            server = create_server(app, host=host, port=port, threads=THREADS, ident="windmill")
        except OSError as error:
            raise WindmillError(f"cannot serve the dashboard on {host}:{port}: {error.strerror or error}") from None
        except ValueError:  # waitress: the name did not resolve ("Invalid host/port specified.")
            raise WindmillError(f"cannot serve the dashboard on {host}:{port}: the host name does not resolve to an "
                                "address") from None
        if hosts is not None:
            hosts.update(loopback_hosts(host, server.effective_port) or ())
        closing = threading.Event()
        thread = threading.Thread(target=_serve, args=(server, closing), name="windmill-web", daemon=True)
        thread.start()
        running = RunningDashboard(server, thread, closing)
        log.info("dashboard on %s%s", running.url, " (actions on)" if allow_actions else "",
                 extra={"action": "web_serving"})
        try:
            yield running
        finally:
            running.close()
