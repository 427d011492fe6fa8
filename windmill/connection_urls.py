"""The connection URLs of the settings: PostgreSQL's and RabbitMQ's built from the seed's variables or read as given,
their ports checked, a password taken from a file, and the forms of a URL that may be printed (masked) or logged
(host, port and database only)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from windmill.errors import ConfigError

MASK = "****"


def mask_url(url: str) -> str:
    """The URL with its password replaced by ****, in the user part and in a libpq `?password=` (which a
    PostgreSQL URL may carry instead); safe to print or log."""
    parts = urlsplit(url)
    if parts.query:
        query = "&".join(f"{name}={MASK}" if name.lower() == "password" else (f"{name}={value}" if sep else name)
                         for name, sep, value in (item.partition("=") for item in parts.query.split("&")))
        parts = parts._replace(query=query)
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username or ''}:{MASK}@{netloc}")
    masked = urlunsplit(parts)
    # urlunsplit drops the `//` of an empty host (`postgresql:///db?host=/run/postgresql`, a Unix socket): the URL
    # shown must be the one given.
    if not parts.netloc and url.startswith(f"{parts.scheme}://") and not masked.startswith(f"{parts.scheme}://"):
        masked = f"{parts.scheme}://{masked[len(parts.scheme) + 1:]}"
    return masked


def describe_url(url: str) -> str:
    """Host, port and database/vhost only: what a log line may say about a connection (a port that is no number is
    shown as written: this runs in error messages, which must not fail themselves)."""
    parts = urlsplit(url)
    try:
        port: object = parts.port or ""
    except ValueError:
        port = parts.netloc.rpartition(":")[2]
    return f"{parts.hostname or 'localhost'}:{port}{parts.path or ''}"


def _url(scheme: str, user: str, password: str | None, host: str, port: str, path: str) -> str:
    credentials = quote(user, safe="")
    if password:
        credentials += ":" + quote(password, safe="")
    return f"{scheme}://{credentials}@{host}:{port}/{quote(path, safe='')}"


def _secret_file(env: Mapping[str, str], name: str) -> str | None:
    """The secret in the file `name` points to (a Docker or systemd credential), so a password need not sit in
    the environment or on a command line. One trailing line break is dropped; the secret never appears in an
    error message."""
    path_text = env.get(name)
    if not path_text:
        return None
    path = Path(path_text).expanduser()
    try:
        secret = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as problem:
        reason = getattr(problem, "strerror", None) or type(problem).__name__
        raise ConfigError(f"{name} names {path}, which cannot be read ({reason})") from None
    secret = secret.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise ConfigError(f"{name} names {path}, which is empty")
    return secret


def _with_password(url: str, password: str) -> str:
    """`url` with its password set to `password` (its user, host and the rest kept)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    user = quote(unquote(parts.username), safe="") if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


def password_from_file(url: str | None, env: Mapping[str, str], name: str, *, url_variable: str,
                        host_variable: str, inline: str) -> str | None:
    """Apply the password file `name` (when set) to the server URL built from the environment: it replaces the
    password of `url_variable`'s URL, or fills in the one of the URL built from the host variables, where a
    password also given inline (`inline`, e.g. DB_PASSWORD) is a conflict: which one wins would be a guess."""
    secret = _secret_file(env, name)
    if secret is None:
        return url
    if url is None:
        raise ConfigError(f"{name} is set but no server is configured ({url_variable} or {host_variable})")
    if not env.get(url_variable) and env.get(inline):
        raise ConfigError(f"{inline} and {name} are both set; keep one")
    return _with_password(url, secret)


def with_a_port(url: str, name: str) -> str:
    """`url`, when the port it names (if any) is one; else the sentence that says so."""
    written = urlsplit(url).netloc.rpartition("@")[2].rpartition("]")[2].partition(":")[2]
    if written and (not written.isdigit() or not 0 < int(written) < 65536):
        raise ConfigError(f"{name} has port {written!r}; a port is a number between 1 and 65535")
    return url


def port_setting(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, default)
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ConfigError(f"{name} must be a port number between 1 and 65535, not {value!r}")
    return value


def _scheme(url: str, name: str) -> str:
    """The URL's scheme; a URL that cannot be split at all (an unclosed `[` of an IPv6 host) is one sentence that
    does not repeat it (it may hold a password)."""
    try:
        return urlsplit(url).scheme
    except ValueError as problem:
        raise ConfigError(f"{name} cannot be read as a URL ({problem})") from None


def database_url_of(env: Mapping[str, str]) -> str | None:
    if url := env.get("WINDMILL_DATABASE_URL"):
        if _scheme(url, "WINDMILL_DATABASE_URL") not in ("postgres", "postgresql"):
            raise ConfigError("WINDMILL_DATABASE_URL must start with postgresql:// (or postgres://)")
        _check_url_ports(url)
        return url
    if not env.get("DB_HOST"):
        return None
    for required in ("DB_NAME", "DB_USER"):
        if not env.get(required):
            raise ConfigError(f"{required} is required when DB_HOST is set")
    return _url(
        "postgresql", env["DB_USER"], env.get("DB_PASSWORD"), env["DB_HOST"],
        port_setting(env, "DB_PORT", "5432"), env["DB_NAME"],
    )


def _check_url_ports(url: str) -> None:
    """Refuse a port libpq would only stumble over later (`Servname not supported for ai_socktype`): every port of
    the URL, a multi-host one's and a `?port=` one's too, is a number between 1 and 65535."""
    try:
        ports = str(conninfo_to_dict(url).get("port") or "")
    except psycopg.ProgrammingError:  # libpq's reason may quote the URL, password and all: not repeated here
        raise ConfigError("WINDMILL_DATABASE_URL cannot be read as a PostgreSQL URL "
                          "(postgresql://user@host:port/database?option=value)") from None
    for port in filter(None, ports.split(",")):
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"WINDMILL_DATABASE_URL has port {port!r}; a port is a number between 1 and 65535")


def amqp_url_of(env: Mapping[str, str]) -> str | None:
    if url := env.get("WINDMILL_AMQP_URL"):
        if _scheme(url, "WINDMILL_AMQP_URL") not in ("amqp", "amqps"):
            raise ConfigError("WINDMILL_AMQP_URL must start with amqp:// or amqps://")
        return with_a_port(url, "WINDMILL_AMQP_URL")
    if not env.get("QUEUE_HOST"):
        return None
    if not env.get("QUEUE_USER"):
        raise ConfigError("QUEUE_USER is required when QUEUE_HOST is set")
    return _url(
        "amqp", env["QUEUE_USER"], env.get("QUEUE_PASSWORD"), env["QUEUE_HOST"],
        port_setting(env, "QUEUE_PORT", "5672"), env.get("QUEUE_VHOST", "/"),
    )
