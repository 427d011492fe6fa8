"""Status for operators: the monitoring views (sql/0007_monitoring_views.sql) and, when a broker is configured,
RabbitMQ's queue depths from its management API — as text tables or JSON, once or refreshed live."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import click
import httpx
import psycopg
from psycopg.rows import dict_row

from windmill.catalog import Catalog
from windmill.db.connect import DatabaseUnavailable
from windmill.db.queries import fetch_value, query
from windmill.errors import first_line
from windmill.settings import Settings, mask_url

log = logging.getLogger(__name__)

MANAGEMENT_TIMEOUT_S = 3.0  # a status must come back even when the broker's web side hangs
FAILURES_SHOWN = 10


# -- the database side -------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """numeric → float: JSON and tables show 0.5, not Decimal('0.50')."""
    return float(value) if isinstance(value, Decimal) else value


def _rows(conn: psycopg.Connection, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(query(name), params)
        return [{key: _plain(value) for key, value in row.items()} for row in cursor.fetchall()]


def collect_status(conn: psycopg.Connection, *, rabbitmq: RabbitMQManagement | None = None,
                   failures: int = FAILURES_SHOWN) -> dict[str, Any]:
    """Everything `windmill-cli status` shows, as plain data (the --json output). Folds the answer counters first
    (sql/0060), when the login may: a read-only connection shows them as of the last periodic pass."""
    try:
        with conn.transaction():
            fold_answer_counts(conn)
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction):
        pass
    totals = _rows(conn, "monitor_totals")[0]
    broker = rabbitmq.queue_depths().as_dict() if rabbitmq is not None else None
    return {
        "collected_at": totals.pop("collected_at"),
        "totals": totals,
        "services": _rows(conn, "monitor_service_progress"),
        "postprocessing": _rows(conn, "monitor_postprocessing_progress"),
        "queues": _rows(conn, "monitor_queue_depths"),
        "rabbitmq": broker,
        "in_flight": tasks_in_flight(_rows(conn, "monitor_tasks_in_flight"), broker),
        "orphaned_in_flight": int(fetch_value(conn, "monitor_orphaned_in_flight")),
        "failures": _rows(conn, "monitor_recent_failures", {"limit": failures}),
        "workers": _rows(conn, "monitor_live_workers"),
        "services_down": _rows(conn, "monitor_services_down"),
    }


def tasks_in_flight(ledger: list[dict[str, Any]], rabbitmq: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Submit's ledger per service beside what RabbitMQ holds in that queue (ready + unacked, when its management
    API answers): `unaccounted` entries have no message any more (a purged queue) and keep their pairs from being
    submitted until `windmill-cli tasks forget` removes them. The API's counts lag a few seconds."""
    held = {row["queue"]: row["ready"] + row["unacked"] for row in rabbitmq["queues"]} if (
        rabbitmq and rabbitmq["available"]) else None
    return [{**row, "in_rabbitmq": None if held is None else held.get(row["queue"], 0),
             "unaccounted": None if held is None else max(0, row["in_flight"] - held.get(row["queue"], 0))}
            for row in ledger]


def recount_answers(conn: psycopg.Connection) -> int:
    """Rebuild service_progress's and postprocessing_progress's counters (done, failed per service) from every
    answer, in one transaction that holds answer writers back meanwhile; returns how many services have answers."""
    with conn.transaction():
        return int(fetch_value(conn, "recount_answer_counts"))


def fold_answer_counts(conn: psycopg.Connection) -> int:
    """Fold the counters' pending deltas (what the periodic pass does); returns how many delta rows were folded."""
    return int(fetch_value(conn, "fold_answer_counts"))


def image_status(conn: psycopg.Connection, image_id: int) -> dict[str, Any] | None:
    """One image's row of image_completeness (None when there is no such image)."""
    rows = _rows(conn, "monitor_image", {"image_id": image_id})
    return rows[0] if rows else None


# -- RabbitMQ through its management API -------------------------------------------------------------------------


@dataclass(frozen=True)
class RabbitMQReport:
    url: str  # without credentials
    available: bool
    queues: list[dict[str, Any]]
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "available": self.available, "queues": self.queues, "error": self.error}


@dataclass(frozen=True)
class RabbitMQManagement:
    """The management HTTP API of the broker: base URL, vhost, login, and which queues are Windmill's."""

    base_url: str
    vhost: str
    username: str | None
    password: str | None
    queue_names: tuple[str, ...] = ()  # empty: every queue of the vhost

    @classmethod
    def configured(cls, amqp_url: str | None, management_url: str | None = None,
                   queue_names: Iterable[str] = ()) -> RabbitMQManagement | None:
        """From WINDMILL_AMQP_MANAGEMENT_URL when set, else derived from the AMQP URL (same host and login, port
        15672, or 15671 for amqps); None when no broker is configured."""
        if amqp_url is None and not management_url:
            return None
        amqp = urlsplit(amqp_url) if amqp_url else None
        vhost = unquote(amqp.path[1:]) if amqp is not None and len(amqp.path) > 1 else "/"
        if management_url:
            parts = urlsplit(management_url)
            username = unquote(parts.username) if parts.username else None
            password = unquote(parts.password) if parts.password else None
            if username is None and amqp is not None and amqp_url is not None:
                username, password = _login(amqp_url)
            netloc = parts.hostname or "localhost"
            if parts.port:
                netloc += f":{parts.port}"
            base = urlunsplit((parts.scheme or "http", netloc, parts.path.rstrip("/"), "", ""))
        else:
            assert amqp is not None and amqp_url is not None
            username, password = _login(amqp_url)
            secure = amqp.scheme == "amqps"
            base = f"{'https' if secure else 'http'}://{amqp.hostname or 'localhost'}:{15671 if secure else 15672}"
        names = tuple(queue_names)
        return cls(base, vhost, username, password, names + tuple(f"{name}.dlq" for name in names))

    @classmethod
    def for_settings(cls, settings: Settings, catalog: Catalog) -> RabbitMQManagement | None:
        """The configured broker's management API, watching the catalog's queues and their dead-letter queues."""
        return cls.configured(settings.amqp_url, settings.amqp_management_url,
                              [service.queue_name for service in catalog.services])

    def queue_depths(self, *, timeout: float = MANAGEMENT_TIMEOUT_S) -> RabbitMQReport:
        """Messages ready and unacknowledged, consumers and rates per queue. Never raises: an unreachable or
        refusing API is reported as unavailable, with the reason."""
        url = f"{self.base_url}/api/queues/{quote(self.vhost, safe='')}"
        auth = (self.username or "", self.password or "") if self.username is not None else None
        try:
            response = httpx.get(url, auth=auth, timeout=timeout,
                                 params={"columns": "name,messages,messages_ready,messages_unacknowledged,consumers,"
                                                    "message_stats,head_message_timestamp"})
            response.raise_for_status()
            listed = response.json()
            if not isinstance(listed, list):
                raise ValueError("the answer is not a list of queues")
        except (httpx.HTTPError, ValueError) as error:
            reason = _describe_failure(error)
            log.debug("RabbitMQ management API unavailable at %s: %s", mask_url(url), reason,
                      extra={"action": "rabbitmq_management_unavailable"})
            return RabbitMQReport(mask_url(self.base_url), False, [], reason)
        wanted = set(self.queue_names)
        queues = [_queue_row(entry) for entry in listed
                  if isinstance(entry, dict) and (not wanted or entry.get("name") in wanted)]
        return RabbitMQReport(mask_url(self.base_url), True, sorted(queues, key=lambda row: row["queue"]))


def _login(amqp_url: str) -> tuple[str | None, str | None]:
    parts = urlsplit(amqp_url)
    return (unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None)


def _describe_failure(error: Exception) -> str:
    if isinstance(error, httpx.HTTPStatusError):
        return f"HTTP {error.response.status_code}"
    if isinstance(error, httpx.TimeoutException):
        return "no answer in time"
    return first_line(error)


def _queue_row(entry: dict[str, Any]) -> dict[str, Any]:
    stats = entry.get("message_stats") or {}

    def rate(name: str) -> float | None:
        details = stats.get(f"{name}_details")
        return round(float(details["rate"]), 2) if isinstance(details, dict) and "rate" in details else None

    head = entry.get("head_message_timestamp")  # only when messages carry a timestamp property
    return {
        "queue": entry.get("name"),
        "ready": entry.get("messages_ready", 0),
        "unacked": entry.get("messages_unacknowledged", 0),
        "consumers": entry.get("consumers", 0),
        "publish_per_s": rate("publish"),
        "deliver_per_s": rate("deliver_get"),
        "oldest_age_s": round(time.time() - float(head), 1) if isinstance(head, int | float) else None,
    }


# -- text ----------------------------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A plain aligned text table (no dependency: output must stay readable in logs and pipes)."""
    if not rows:
        return "  (none)"
    columns = columns or list(rows[0])
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _rabbitmq_section(report: dict[str, Any] | None) -> list[str]:
    if report is None:
        return ["RabbitMQ: not configured (the per-service queues live in the job table)."]
    if not report["available"]:
        return [f"RabbitMQ queues: management API unavailable at {report['url']} ({report['error']})."]
    return [f"RabbitMQ queues ({report['url']}):", format_table(report["queues"])]


def _in_flight_section(rows: list[dict[str, Any]] | None, rabbitmq: dict[str, Any] | None,
                       orphaned: int | None = None) -> list[str]:
    if not rows and rabbitmq is None:
        return []  # no broker, no ledger: nothing to say
    lines = ["RabbitMQ tasks in flight (submit's ledger; in_rabbitmq = ready + unacked in the queue):",
             format_table(rows or [])]
    if orphaned:
        lines.append(f"  {orphaned} of them entered by a submit that ended before RabbitMQ confirmed them: the "
                     "scheduler's next tick resends them; at once: `windmill-cli tasks resend`.")
    if any(row["unaccounted"] for row in rows or []):
        lines.append("  Entries without a message (lost by RabbitMQ, or a purged queue): the scheduler resends them "
                     "once WINDMILL_LOST_TASK_AFTER_S old; at once: `windmill-cli tasks resend --older-than 0`.")
    return [*lines, ""]


def _down_section(rows: list[dict[str, Any]] | None) -> list[str]:
    """The services that live workers find down: their calls wait for them (windmill.farm.outages); nothing while
    every service answers."""
    if not rows:
        return []
    return ["Services down, as live workers find them (refusing connections, or HTTP 502/503/504/429): their calls "
            "wait up to WINDMILL_OUTAGE_WAIT_S, then take their retries; `windmill-cli farm check` probes them:",
            format_table(rows), ""]


def format_status(status: dict[str, Any]) -> str:
    totals = status["totals"]
    workers = status["workers"]
    alive = sum(1 for worker in workers if worker["alive"])
    parts = [
        f"Windmill status at {_cell(status['collected_at'])}",
        "Totals: " + ", ".join(f"{key} {value}" for key, value in totals.items()),
        "",
        "Services (job-table tasks; done/failed = images; rate = successes per minute, last minute / last hour):",
        format_table(status["services"]),
        "",
        *_down_section(status.get("services_down")),
        "Postprocessing (job-table tasks; done/failed = boxes answered; caption_score: captions scored):",
        format_table(status["postprocessing"]),
        "",
        "Job queues (queued = due now; oldest_age_s = age of the oldest job due now):",
        format_table(status["queues"]),
        "",
        *_rabbitmq_section(status.get("rabbitmq")),
        "",
        *_in_flight_section(status.get("in_flight"), status.get("rabbitmq"), status.get("orphaned_in_flight")),
        f"Recent failures (last 24 h, newest {len(status['failures'])}):",
        format_table(status["failures"]),
        "",
        f"Workers ({alive} alive of {len(workers)} not stopped):",
        format_table(workers),
    ]
    return "\n".join(parts)


# -- live ------------------------------------------------------------------------------------------------------------


def watch_status(render: Callable[[], str], *, interval: float = 2.0,
                 echo: Callable[[str], None] = click.echo, clear: Callable[[], None] = click.clear,
                 sleep: Callable[[float], None] = time.sleep, refreshes: int | None = None) -> None:
    """Redraw `render()` every `interval` seconds until Ctrl-C (or `refreshes` times, for tests).

    A database that goes away does not end the watch: the screen says so and the next refresh tries again
    (`render` reconnects, see windmill_status_renderer).
    """
    shown = 0
    try:
        while refreshes is None or shown < refreshes:
            try:
                text = render()
            except (psycopg.OperationalError, DatabaseUnavailable) as error:
                text = f"database unavailable: {first_line(error)}; retrying every {interval:g} s"
            clear()
            echo(text)
            echo(f"\n(refreshing every {interval:g} s; Ctrl-C to stop)")
            shown += 1
            if refreshes is None or shown < refreshes:
                sleep(interval)
    except KeyboardInterrupt:
        return


def status_renderer(connect: Callable[[], psycopg.Connection], *, rabbitmq: RabbitMQManagement | None = None,
                    failures: int = FAILURES_SHOWN) -> tuple[Callable[[], str], Callable[[], None]]:
    """A render function for watch_status that holds one connection and opens a new one after losing it, and
    the function that closes it."""
    held: list[psycopg.Connection] = []

    def render() -> str:
        if held and held[0].closed:
            held.clear()
        if not held:
            held.append(connect())
        try:
            return format_status(collect_status(held[0], rabbitmq=rabbitmq, failures=failures))
        except psycopg.OperationalError:
            held[0].close()
            raise

    def close() -> None:
        for conn in held:
            conn.close()

    return render, close



def watch_database_status(connect: Callable[[], psycopg.Connection], *, rabbitmq: RabbitMQManagement | None,
                          interval: float) -> None:
    """`status --watch`: redraw the status every `interval` seconds until Ctrl-C, through one held connection."""
    render, close = status_renderer(connect, rabbitmq=rabbitmq)
    try:
        watch_status(render, interval=interval)
    finally:
        close()
