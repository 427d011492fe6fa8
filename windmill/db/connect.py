"""Where the database is (configured URL or the embedded cluster) and how Windmill connects to it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from windmill.connection_urls import describe_url, misread_by_libpq
from windmill.db.jsonb import use_orjson
from windmill.db.migrations import SCHEMA
from windmill.db.refusals import connection_failure, server_away
from windmill.errors import WindmillError, first_line
from windmill.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
RECONNECT_TIMEOUT_S = 30.0  # longest a pool keeps doubling the wait between attempts to reconnect


class DatabaseUnavailable(WindmillError):
    """PostgreSQL could not be reached; the message says where, never with credentials. `away`: the server is away
    or busy (refused, starting, out of connections), not refusing this login or database (db/refusals.py)."""

    def __init__(self, message: str, *, away: bool = False) -> None:
        super().__init__(message)
        self.away = away


# What the server answers when it is going or not there yet (admin_shutdown, crash_shutdown, cannot_connect_now), and
# the class of what it lacks (insufficient resources: too many connections, disk full, out of memory).
_SERVER_GOING = frozenset({"57P01", "57P02", "57P03"})
_SERVER_SHORT = "53"


def is_database_unavailable(error: BaseException) -> bool:
    """True for a failure of the database rather than of the work: the server away or restarting, a connection
    lost or shut down by an admin, the server out of connections or disk, no pooled connection in time (PoolTimeout).
    Work that failed so is not an attempt: it waits and runs again. Judged by the SQLSTATE, not by psycopg's class:
    OperationalError holds errors of the work too, which fail again each time (an index row over its size limit,
    a statement timeout, a lock not available): taken for the database away, a job was given its attempt back for
    ever, never dead."""
    if isinstance(error, DatabaseUnavailable):
        return True
    if not isinstance(error, psycopg.OperationalError):
        return False
    state = error.sqlstate
    return state is None or state.startswith(("08", _SERVER_SHORT)) or state in _SERVER_GOING


RECONNECT_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)  # then 30 s apart, for as long as it takes


def _reconnect_delay(waits: int) -> float:
    """The wait before the next try, after `waits` waits already."""
    return RECONNECT_DELAYS_S[min(waits, len(RECONNECT_DELAYS_S) - 1)]


def outliving_connection_loss(what: str, stopping: threading.Event, attempt: Callable[[], T]) -> T | None:
    """Run `attempt` (a stream's loop: `submit --follow`, `images watch`) until it returns. When the database goes
    away under it (PostgreSQL restarted or failed over, the session killed by an admin), a warning says so and the
    attempt runs again once the delay has passed, as a worker's loop does, rather than the stream ending with the
    first lost connection; the attempt resumes from what its report reached. None when stopped meanwhile."""
    waits = 0
    while True:
        try:
            return attempt()
        except Exception as error:
            if not is_database_unavailable(error) or stopping.is_set():
                raise
            delay = _reconnect_delay(waits)
            waits += 1
            log.warning("%s lost the database (%s); connecting again in %g s", what, first_line(error), delay,
                        extra={"action": "reconnecting"})
        if stopping.wait(delay):
            return None


def describe_conninfo(conninfo: str) -> str:
    """host:port/dbname of a conninfo, for messages and logs (no user, no password). A URL libpq misreads (an
    unencoded `@` or `/` in its password) is described by the part after its last `@`, which holds no password."""
    params = conninfo_to_dict(conninfo)
    if misread_by_libpq(params):
        return describe_url(conninfo)
    return f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"


def windmill_conninfo(conninfo: str, application_name: str = "windmill") -> str:
    """The conninfo plus Windmill's session settings: its schema first on the search path, after the `options` the
    URL gives (a statement_timeout, say: they pass through, as libpq's own options), and its application name and
    a connect timeout unless the URL sets them."""
    given = conninfo_to_dict(conninfo)
    options = " ".join(filter(None, [str(given.get("options") or ""), f"-c search_path={SCHEMA},public"]))
    return make_conninfo(
        conninfo,
        options=options,
        application_name=given.get("application_name") or application_name,
        connect_timeout=given.get("connect_timeout") or 10,
    )


class Database:
    """A resolved PostgreSQL location. Hands out connections and pools bound to Windmill's schema."""

    def __init__(self, conninfo: str, *, application_name: str = "windmill", embedded: bool = False) -> None:
        self.conninfo = windmill_conninfo(conninfo, application_name)
        self.location = describe_conninfo(conninfo)
        self.embedded = embedded  # the embedded cluster: a failure's fix is not a setting's

    def connect(self, *, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection:
        try:
            conn = psycopg.connect(self.conninfo, autocommit=autocommit, **kwargs)
        except psycopg.OperationalError as error:
            raise DatabaseUnavailable(connection_failure(error, self.location, embedded=self.embedded),
                                      away=server_away(error)) from None
        use_orjson(conn)
        return conn

    def connect_when_up(self, what: str) -> psycopg.Connection:
        """A connection, waiting for the server while it is away (refused, starting, out of connections: a worker
        started while its database restarts, or before it on a machine's boot), with a warning 1, 2, 4 … up to 30 s
        apart; a refused login or a missing database raises at once, as `connect` does."""
        waits = 0
        while True:
            try:
                return self.connect()
            except DatabaseUnavailable as error:
                if not error.away:
                    raise
                delay = _reconnect_delay(waits)
                waits += 1
                log.warning("%s: %s; trying again in %g s", what, error, delay, extra={"action": "reconnecting"})
            time.sleep(delay)

    def pool(self, *, min_size: int = 1, max_size: int = 4, name: str = "windmill",
             wait_s: float = 30.0, checked: bool = False) -> ConnectionPool:
        """A pool of autocommit connections; callers open transactions explicitly where they need one.
        Connections are not checked on checkout unless `checked` (that costs a round trip per use): a connection
        that died raises OperationalError once, the pool drops it, and the caller's retry takes a fresh one.
        While PostgreSQL is away the pool retries each connection 1, 2, 4, … s apart; an attempt gives up after
        RECONNECT_TIMEOUT_S and the next checkout starts a new one from 1 s, so after a long outage the pool is back
        within seconds, not after a doubling that had grown to minutes. A checkout waits up to `wait_s` for a
        connection (while PostgreSQL is away, for it to come back), then raises PoolTimeout, an OperationalError."""
        return ConnectionPool(
            self.conninfo,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True},
            configure=use_orjson,
            name=name,
            reconnect_timeout=RECONNECT_TIMEOUT_S,
            timeout=wait_s,
            check=ConnectionPool.check_connection if checked else None,
            open=True,
        )


@contextmanager
def open_database(settings: Settings, *, application_name: str = "windmill") -> Iterator[Database]:
    """The configured database, or the embedded cluster for as long as the block runs."""
    if settings.database_url is not None:
        yield Database(settings.database_url, application_name=application_name)
        return
    from windmill.db.embedded import EmbeddedPostgres

    embedded = EmbeddedPostgres(settings.home)
    conninfo = embedded.acquire()
    try:
        yield Database(conninfo, application_name=application_name, embedded=True)
    finally:
        embedded.release()


def conninfo_to_url(conninfo: str) -> str:
    """A postgresql:// URL for the same server, e.g. to hand to worker subprocesses in their environment."""
    params = conninfo_to_dict(conninfo)
    credentials = quote(str(params.get("user", "postgres")), safe="")
    if params.get("password"):
        credentials += ":" + quote(str(params["password"]), safe="")
    host = params.get("host", "127.0.0.1")
    return f"postgresql://{credentials}@{host}:{params.get('port', 5432)}/{params.get('dbname', '')}"
