"""The connection URLs of the settings: PostgreSQL's and RabbitMQ's built from the seed's variables or read as given,
their ports checked, a password taken from a file, and the forms of a URL that may be printed (masked) or logged
(host, port and database only)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from windmill.errors import ConfigError

MASK = "****"


# The query parameters whose value is a secret: libpq's `password`, and `sslpassword` (the client key's passphrase).
SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def split_credentials(url: str) -> tuple[str, str | None, str]:
    """(`scheme://`, the user part or None, the rest: host, port, path, query). The user part ends at the LAST `@`,
    so a password holding an unencoded `#`, `?`, `/` or `@` lies wholly in it, never in the rest that may be shown
    (an `@` in the query makes more of the URL hidden, not less). Text after `://` that starts with `/` has no
    host and so no user part (a Unix socket: `postgresql:///db?host=/run/postgresql`)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", None, url
    if rest.startswith("/") or "@" not in rest:
        return f"{scheme}://", None, rest
    credentials, _, rest = rest.rpartition("@")
    return f"{scheme}://", credentials, rest


def mask_url(url: str) -> str:
    """The URL with its password replaced by ****, in the user part and in a libpq `?password=` or
    `?sslpassword=` (which a PostgreSQL URL may carry); safe to print or log whatever characters the password
    holds."""
    prefix, credentials, rest = split_credentials(url)
    if credentials is not None:
        user, colon, _ = credentials.partition(":")
        # A user name holds none of these unencoded: such a user part is a password as much as a name.
        if any(character in user for character in "/?#"):
            user, colon = MASK, ""
        prefix += f"{user}:{MASK}@" if colon else f"{user}@"
    head, question, query = rest.partition("?")
    if question:
        rest = head + "?" + "&".join(
            f"{name}={MASK}" if sep and name.lower() in SECRET_PARAMETERS else f"{name}{sep}{value}"
            for name, sep, value in (item.partition("=") for item in query.split("&")))
    return prefix + rest


def _host_and_port(url: str) -> str:
    """The `host:port` text of a URL (after its user part, before its path or query)."""
    return re.split(r"[/?#]", split_credentials(url)[2], maxsplit=1)[0]


def describe_url(url: str) -> str:
    """Host, port and database/vhost only: what a log line may say about a connection (a port that is no number is
    shown as written: this runs in error messages, which must not fail themselves)."""
    prefix, _, rest = split_credentials(url)
    parts = urlsplit(prefix + rest if prefix else url)
    try:
        port: object = parts.port or ""
    except ValueError:
        port = parts.netloc.rpartition(":")[2]
    return f"{parts.hostname or 'localhost'}:{port}{parts.path or ''}"


def misread_by_libpq(params: Mapping[str, object]) -> bool:
    """True when libpq's reading of a URL (its conninfo_to_dict) holds an `@` in its host, port or database name: it
    ended the user part at an `@` or `/` of the password, so what it calls the host (or port, or database) is the
    password's tail, which no message may quote."""
    return any("@" in str(params.get(key) or "") for key in ("host", "port", "dbname"))


def check_urllib_credentials(url: str, name: str) -> str:
    """`url`, unless Python's urllib (which pika and httpx use) would end its user part before the last `@`: at a
    `/`, `?` or `#` of the password, taking the password's head for a host and port and quoting it in its errors.
    The sentence names the characters, never the password."""
    credentials = split_credentials(url)[1]
    if credentials is not None and credentials != urlsplit(url).netloc.rpartition("@")[0]:
        raise ConfigError(f"{name}'s user or password holds a '/', '?' or '#' that is not percent-encoded; "
                          "write them as %2F, %3F and %23")
    return url


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
    prefix, credentials, rest = split_credentials(url)
    user = quote(unquote(credentials.partition(":")[0]), safe="") if credentials else ""
    return f"{prefix}{user}:{quote(password, safe='')}@{rest}"


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
    check_urllib_credentials(url, name)
    written = _host_and_port(url).rpartition("]")[2].partition(":")[2]
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
    """Refuse a URL libpq reads with a password's tail as its host (misread_by_libpq), and a port libpq would only
    stumble over later (`Servname not supported for ai_socktype`): every port of the URL, a multi-host one's and a
    `?port=` one's too, is a number between 1 and 65535."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:  # libpq's reason may quote the URL, password and all: not repeated here
        raise ConfigError("WINDMILL_DATABASE_URL cannot be read as a PostgreSQL URL "
                          "(postgresql://user@host:port/database?option=value)") from None
    if misread_by_libpq(params):
        raise ConfigError("WINDMILL_DATABASE_URL's user or password holds an '@' or '/' that is not "
                          "percent-encoded, which libpq takes for the end of the password; write them as %40 and %2F")
    ports = str(params.get("port") or "")
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
