"""Database errors as one sentence for the person at the command line: what PostgreSQL refused (a login, a
privilege, a host, a port, a database) and what to change. This is the one home of that translation: a connection
that fails (`Database.connect`) and a statement that is refused (the CLI's error handling) both come here.

Which role a command needs is deploy/roles.sql's division of work: `windmill_owner` changes the schema and the
collection, `windmill_worker` does everything else, `windmill_monitor` reads the monitoring views in psql."""

from __future__ import annotations

import re

import psycopg
from psycopg import errors

OWNER_COMMANDS = frozenset({"init-db", "images add", "images watch", "images remove", "cron install",
                            "cron uninstall"})
WORKER_ROLE = "windmill_worker"
MONITOR_ROLE = "windmill_monitor"
# The commands that read only, which the monitor role may run (deploy/roles.sql: the collection, its products, the
# views); a refusal names the least role that suffices.
MONITOR_COMMANDS = frozenset({"export", "show", "eval", "web", "images groups"})
OWNER_ROLE = "windmill_owner"
# Where the host, port, login and database come from, for the fixes the sentences suggest.
_SERVER_SETTINGS = "WINDMILL_DATABASE_URL or DB_HOST and DB_PORT"

# libpq's messages for a server that is away or busy rather than settings that are wrong (server_away, below).
_NO_FREE_CONNECTION = r"too many (connections|clients)|remaining connection slots are reserved"
_SERVER_NOT_READY = r"the database system is (starting up|shutting down|in recovery mode|not yet accepting connections)"
_REFUSED = r"connection refused"
_NO_ANSWER = r"timeout expired"

# (pattern in libpq's message, what was refused, how to fix it); the first that matches wins. Groups of the
# pattern fill {0}, {1}… of the texts; {port} is the port the location names.
_CONNECTION_FAILURES: tuple[tuple[str, str, str], ...] = (
    (r"password authentication failed for user \"([^\"]*)\"", 'password authentication failed for user "{0}"',
     "check the password (WINDMILL_DATABASE_PASSWORD_FILE, DB_PASSWORD or the URL's)"),
    (r"database \"([^\"]*)\" does not exist", 'database "{0}" does not exist',
     "create it (`createdb {0}`, deploy/README.md) or name the right one (the URL's path or DB_NAME)"),
    (r"role \"([^\"]*)\" does not exist", 'role "{0}" does not exist',
     "create the login as a member of a Windmill role (deploy/roles.sql) or name the right one (the URL's user "
     "or DB_USER)"),
    (r"no pg_hba\.conf entry for host \"([^\"]*)\", user \"([^\"]*)\"", 'the server lets no login of user "{1}" '
     'in from {0}', "add a line for this host and user to the server's pg_hba.conf (deploy/README.md)"),
    (r"pg_hba\.conf rejects connection for host \"([^\"]*)\", user \"([^\"]*)\"",
     'the server\'s pg_hba.conf turns user "{1}" away from {0} (a reject line)',
     "change the server's pg_hba.conf: a line above the reject one that lets this host and user in (deploy/README.md)"),
    (r"fe_sendauth: no password supplied", "the server asks for a password and none was given",
     "give it (WINDMILL_DATABASE_PASSWORD_FILE, DB_PASSWORD, the URL's, or ~/.pgpass)"),
    (r"permission denied for database \"?([^\"\s]*)\"?", 'the login may not connect to database "{0}"',
     "grant it CONNECT (deploy/roles.sql does for its roles)"),
    (_NO_FREE_CONNECTION, "the server has no free connection",
     "raise its max_connections, or run fewer workers or fewer --concurrency threads (a worker holds a few "
     "connections more than its threads; deploy/README.md sizes max_connections)"),
    (_SERVER_NOT_READY,
     "the server is {0}", "try again in a moment"),
    (_REFUSED, "connection refused",
     "is PostgreSQL running there and listening on port {port}? (the host and port come from " + _SERVER_SETTINGS
     + ")"),
    (_NO_ANSWER, "no answer within the connect timeout",
     "check the host and port (" + _SERVER_SETTINGS + ") and any firewall between"),
    # Before the host: a bad port fails the name lookup too ("failed to resolve host ...: Servname not supported").
    (r"invalid port number|invalid integer value \"[^\"]*\" for connection option \"port\"|servname not supported",
     "the port is not a port number", "a port is a number between 1 and 65535 (" + _SERVER_SETTINGS + ")"),
    (r"failed to resolve host '([^']*)'|could not translate host name \"([^\"]*)\"",
     "the host name {0} does not resolve", "check the host (" + _SERVER_SETTINGS + ")"),
)


# Errors of a schema that is not (or not fully) migrated.
_SCHEMA_MISSING = (errors.UndefinedTable, errors.UndefinedFunction, errors.UndefinedColumn, errors.InvalidSchemaName)


def _reason(message: str) -> str:
    """The most telling part of libpq's message: after its `connection to server at …, port … failed:` prefix and
    the FATAL tag, on the first line that says something (libpq adds hints on indented lines below)."""
    for line in message.splitlines():
        line = line.strip()
        if not line or line.startswith(("Is the server running", "Multiple connection attempts")):
            continue
        line = line.rsplit(" failed: ", 1)[-1]
        return re.sub(r"^(FATAL|ERROR):\s+", "", line).strip()
    return "no reason given"


# The embedded cluster's settings are Windmill's own: a refused connection means it is not running.
_EMBEDDED_NOT_RUNNING = ("the embedded database is not running (`windmill-cli db stop` stopped it, or its server "
                         "died); a command that needs it starts it again")


# The failures that say the server is away or busy rather than that the settings are wrong: PostgreSQL not (yet)
# running or listening, starting up, shutting down, recovering, or out of connections, or a connection it dropped.
# A worker that starts meets them while its database restarts or boots after it (a machine's reboot, a compose
# file's start order), and waits.
_SERVER_AWAY = re.compile("|".join((_NO_FREE_CONNECTION, _SERVER_NOT_READY, _REFUSED, _NO_ANSWER,
                                    r"server closed the connection unexpectedly")), flags=re.IGNORECASE)


def server_away(error: psycopg.Error) -> bool:
    """Whether a failed connection says the server is away or busy (worth waiting for), not a refused login, a
    missing database or role, or a host or port that cannot be right (worth saying at once)."""
    return bool(_SERVER_AWAY.search(str(error)))


def connection_failure(error: psycopg.Error, location: str, *, embedded: bool = False) -> str:
    """One sentence for a connection to `location` (host:port/database) that failed: the reason and the fix.
    `embedded`: the location is the embedded cluster's, whose host and port come from no setting."""
    message = str(error)
    port = location.rsplit("/", 1)[0].rsplit(":", 1)[-1]
    for pattern, refused, fix in _CONNECTION_FAILURES:
        found = re.search(pattern, message, flags=re.IGNORECASE)
        if found:
            groups = [group for group in found.groups() if group is not None]
            if embedded and refused == "connection refused":
                fix = _EMBEDDED_NOT_RUNNING
            return f"cannot connect to PostgreSQL at {location}: {refused.format(*groups)}; " \
                   f"{fix.format(*groups, port=port)}"
    return f"cannot connect to PostgreSQL at {location}: {_reason(message)}"


def required_role(command: str | None) -> str:
    """The deploy/roles.sql role whose privileges a command needs: the least one that runs it."""
    if command in OWNER_COMMANDS:
        return OWNER_ROLE
    return MONITOR_ROLE if command in MONITOR_COMMANDS else WORKER_ROLE


def refusal(error: psycopg.Error, *, command: str | None, login: str | None, location: str) -> str:
    """One sentence for a database error that reached the command line: what was refused, as whom, and the fix."""
    from psycopg_pool import PoolTimeout

    doing = f"`{command}`" if command else "this command"
    as_whom = f" as {login}" if login else ""
    if isinstance(error, PoolTimeout):
        return f"no connection to PostgreSQL at {location} came free within the pool's timeout during {doing}; " \
               "the server is overloaded or away: try again"
    diag = error.diag
    primary = (diag.message_primary or _reason(str(error))).rstrip(".")
    if isinstance(error, errors.InsufficientPrivilege):
        role = required_role(command)
        if login == role:  # the very role: what it lacks is a grant on something an upgrade's init-db added
            return f"PostgreSQL refused {doing}{as_whom}: {primary}; {role} has not been granted what this " \
                   f"Windmill's schema added: run deploy/roles.sql again, as after every `init-db` that upgrades " \
                   f"(deploy/README.md)"
        return f"PostgreSQL refused {doing}{as_whom}: {primary}; it needs the privileges of {role}: run it with a " \
               f"login that is a member of {role} (deploy/roles.sql; deploy/README.md says which command needs which)"
    if isinstance(error, _SCHEMA_MISSING):
        return f"PostgreSQL refused {doing}{as_whom}: {primary}; the schema is older than this Windmill or missing: " \
               f"run `windmill-cli init-db` as {OWNER_ROLE}"
    if isinstance(error, psycopg.OperationalError) and error.sqlstate is None:
        return f"lost the connection to PostgreSQL at {location} during {doing}: {_reason(str(error))}; run it " \
               "again when the server is back"
    hint = f" ({diag.message_hint.rstrip('.')})" if diag.message_hint else ""
    code = f" [SQLSTATE {error.sqlstate}]" if error.sqlstate else ""
    return f"PostgreSQL refused {doing}{as_whom}: {primary}{hint}{code}"
