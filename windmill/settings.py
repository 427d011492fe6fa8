"""Environment and an optional settings file → one immutable Settings object; secrets are masked whenever shown.

The settings file is the first that exists of: `--env-file`, WINDMILL_ENV_FILE, `./.env`, /etc/windmill/windmill.env
(the systemd units' EnvironmentFile), so a command on a deployed host reads what its workers read. Variables set in
the environment win over the file. `load_configuration` also says where each setting came from (`windmill-cli
config`)."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from dotenv import dotenv_values

from windmill.connection_urls import MASK as MASK  # where config's callers look for them
from windmill.connection_urls import amqp_url_of, database_url_of, password_from_file, port_setting, with_a_port
from windmill.connection_urls import describe_url as describe_url
from windmill.connection_urls import mask_url as mask_url
from windmill.errors import ConfigError
from windmill.harmony import HarmonyConfig

log = logging.getLogger(__name__)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_HOME = Path("~/.local/share/windmill").expanduser()
DEFAULT_HARMONY = HarmonyConfig()
LOST_TASK_AFTER_S = 600.0  # see Settings.lost_task_after_s
DEFAULT_OUTAGE_WAIT_S = 300.0  # see Settings.outage_wait_s
# The services' limit on a request's body (spec §2.7: 8 MiB at df57b25, raised to 32 MiB in 2026-07).
SERVICE_MAX_REQUEST_BYTES = 8 * 1024 * 1024
# What an upload's request holds besides the image: the multipart envelope and its form fields (a caption, a prompt).
UPLOAD_ENVELOPE_BYTES = 64 * 1024
# The memory a process's image decodes may hold at once (windmill/images/budget.py): an image at the pixel limit
# takes up to 684 MiB to prepare (an RGBA PNG), so one fits with room for the ordinary photos of the other threads;
# below the least, a 12 MP photo turned upright (96 MB) would be refused.
DECODE_BUDGET_BYTES = 1024 * 1024 * 1024
MIN_DECODE_BUDGET_BYTES = 128 * 1024 * 1024
# The systemd units' EnvironmentFile: the last place a settings file is looked for. WINDMILL_SYSTEM_ENV_FILE (in the
# environment) moves it: another system's layout, or tests that must not read the settings of the host they run on.
SYSTEM_ENV_FILE = Path("/etc/windmill/windmill.env")


@dataclass(frozen=True)
class Settings:
    """Everything Windmill reads from its environment. `database_url is None` means the embedded cluster."""

    database_url: str | None = field(default=None, repr=False)
    amqp_url: str | None = field(default=None, repr=False)
    amqp_management_url: str | None = field(default=None, repr=False)  # RabbitMQ's HTTP API, for `status`
    home: Path = DEFAULT_HOME
    service_config: Path | None = None
    service_name: str | None = None
    worker_id: str = ""
    log_level: str = "INFO"
    port_offset: int = 0  # added to every catalog port (a stand-in farm served with --port-offset)
    image_roots: tuple[Path, ...] = ()
    allow_private_urls: bool = False
    harmony: HarmonyConfig = DEFAULT_HARMONY
    backfill_interval_s: float = 60.0  # the scheduler role's period
    backfill_page: int = 1000  # images the backfill looks at per run
    submit_page: int = 2000  # images submit reads, looks up and publishes per page (one short transaction each)
    job_retention_s: float = 3600.0  # done jobs older than this are pruned
    # The scheduler resends RabbitMQ tasks in flight this old whose queue holds no message ready.
    lost_task_after_s: float = LOST_TASK_AFTER_S
    # Prometheus metrics: a worker serves them on this port; `workers start` gives its workers this port + index.
    metrics_port: int | None = None
    # The retry budget of a RabbitMQ service task: attempts before its error row and the dead-letter queue, and
    # the hold after the first failure (doubling per attempt, 30 s at most).
    amqp_task_attempts: int = 5
    amqp_retry_delay_s: float = 1.0
    database_wait_s: float = 30.0  # how long a worker's attempt waits for a database connection before it fails
    # How long a worker's calls wait for a service that is down before they take their retries (farm/outages.py).
    outage_wait_s: float = DEFAULT_OUTAGE_WAIT_S
    # An image whose upload would not fit the services' request limit is re-encoded (windmill/image_cache.py).
    service_max_bytes: int = SERVICE_MAX_REQUEST_BYTES
    # The bytes of decoded pixels a process's threads may hold at once; an image whose decode alone takes more is
    # refused (windmill/images/budget.py).
    decode_budget_bytes: int = DECODE_BUDGET_BYTES

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def uses_rabbitmq(self) -> bool:
        return self.amqp_url is not None

    @property
    def max_upload_image_bytes(self) -> int:
        """The largest image an upload may carry and still fit the services' request limit."""
        return max(1, self.service_max_bytes - UPLOAD_ENVELOPE_BYTES)

    def shown(self) -> dict[str, str]:
        """The effective settings as text, passwords masked (for `windmill-cli config`)."""
        shown: dict[str, str] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "database_url":
                value = mask_url(value) if value else "(embedded PostgreSQL under home)"
            elif item.name == "amqp_management_url":
                value = mask_url(value) if value else "(derived from the AMQP URL)"
            elif item.name == "amqp_url":
                value = mask_url(value) if value else "(none: per-service queues live in PostgreSQL)"
            elif item.name == "metrics_port" and value is None:
                value = "(off)"
            elif item.name == "harmony":
                value = json.dumps(value.params())
            elif isinstance(value, tuple):
                value = os.pathsep.join(map(str, value)) or "(any)"
            elif value is None:
                value = "(default)"
            shown[item.name] = str(value)
        return shown

    def as_json(self) -> dict[str, Any]:
        """The effective settings with their types (numbers, booleans, lists, null), passwords masked
        (`windmill-cli config --json`)."""
        typed: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, str) and item.name.endswith("_url"):
                value = mask_url(value)
            elif isinstance(value, HarmonyConfig):
                value = value.params()
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [str(part) for part in value]
            typed[item.name] = value
        return typed


# The variables behind each setting, for `config` to say where a value came from. tests/test_settings.py checks
# that every field and every variable this module reads is listed.
SETTING_VARIABLES: dict[str, tuple[str, ...]] = {
    "database_url": ("WINDMILL_DATABASE_URL", "DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD",
                     "WINDMILL_DATABASE_PASSWORD_FILE"),
    "amqp_url": ("WINDMILL_AMQP_URL", "QUEUE_HOST", "QUEUE_PORT", "QUEUE_USER", "QUEUE_PASSWORD", "QUEUE_VHOST",
                 "WINDMILL_AMQP_PASSWORD_FILE"),
    "amqp_management_url": ("WINDMILL_AMQP_MANAGEMENT_URL",),
    "home": ("WINDMILL_HOME",),
    "service_config": ("WINDMILL_SERVICE_CONFIG",),
    "service_name": ("SERVICE_NAME",),
    "worker_id": ("WORKER_ID",),
    "log_level": ("LOG_LEVEL",),
    "port_offset": ("WINDMILL_PORT_OFFSET",),
    "image_roots": ("WINDMILL_IMAGE_ROOTS",),
    "allow_private_urls": ("WINDMILL_ALLOW_PRIVATE_URLS",),
    "harmony": ("WINDMILL_HARMONY",),
    "backfill_interval_s": ("WINDMILL_BACKFILL_INTERVAL_S",),
    "backfill_page": ("WINDMILL_BACKFILL_PAGE",),
    "submit_page": ("WINDMILL_SUBMIT_PAGE",),
    "job_retention_s": ("WINDMILL_JOB_RETENTION_S",),
    "lost_task_after_s": ("WINDMILL_LOST_TASK_AFTER_S",),
    "metrics_port": ("WINDMILL_METRICS_PORT",),
    "amqp_task_attempts": ("WINDMILL_AMQP_TASK_ATTEMPTS",),
    "amqp_retry_delay_s": ("WINDMILL_AMQP_RETRY_DELAY_S",),
    "database_wait_s": ("WINDMILL_DATABASE_WAIT_S",),
    "outage_wait_s": ("WINDMILL_OUTAGE_WAIT_S",),
    "service_max_bytes": ("WINDMILL_SERVICE_MAX_BYTES",),
    "decode_budget_bytes": ("WINDMILL_DECODE_BUDGET_BYTES",),
}


def _image_roots(value: str) -> tuple[Path, ...]:
    """WINDMILL_IMAGE_ROOTS: the folders images may be read from (none: anywhere). A value that names no folder at
    all (`:`) is refused rather than read as "anywhere": it was meant to confine."""
    if not value:
        return ()
    roots = tuple(Path(p).expanduser().resolve() for p in value.split(os.pathsep) if p.strip())
    if not roots:
        raise ConfigError(f"WINDMILL_IMAGE_ROOTS is {value!r}, which names no folder; give folders separated by "
                          f"{os.pathsep!r}, or leave it unset to allow every path")
    return roots


def _offset(env: Mapping[str, str]) -> int:
    value = env.get("WINDMILL_PORT_OFFSET", "0") or "0"
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"WINDMILL_PORT_OFFSET must be a whole number, not {value!r}") from None


def _harmony(env: Mapping[str, str]) -> HarmonyConfig:
    """WINDMILL_HARMONY: a JSON object of HarmonyConfig fields, e.g. {"fusion": "union", "iou_threshold": 0.4}."""
    text = env.get("WINDMILL_HARMONY", "")
    if not text:
        return DEFAULT_HARMONY
    try:
        options = json.loads(text)
    except ValueError as bad:
        raise ConfigError(f"WINDMILL_HARMONY is not JSON: {bad}") from None
    valid = list(DEFAULT_HARMONY.params())
    if not isinstance(options, dict):
        raise ConfigError(f"WINDMILL_HARMONY must be a JSON object of harmony settings ({', '.join(valid)})")
    unknown = [key for key in options if key not in valid]
    if unknown:
        raise ConfigError(f"WINDMILL_HARMONY has unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(map(repr, unknown))}; valid keys: {', '.join(valid)}")
    try:
        return DEFAULT_HARMONY.with_changes(**options)
    except (ValueError, TypeError) as bad:
        raise ConfigError(f"WINDMILL_HARMONY is not a valid harmony configuration: {bad}") from None


_Number = TypeVar("_Number", int, float)


def _seconds(env: Mapping[str, str], name: str, default: float, most: float) -> float:
    return _positive(env, name, default, most, float, f"a number of seconds between 0 and {most:g}")


def _count(env: Mapping[str, str], name: str, default: int, most: int, *, least: int = 1) -> int:
    what = f"a whole number between {least:,} and {most:,}"
    value = _positive(env, name, default, most, int, what)
    if value < least:
        raise ConfigError(f"{name} must be {what}, not {env[name].strip()!r}")
    return value


def _positive(env: Mapping[str, str], name: str, default: _Number, most: _Number, parse: type[_Number],
              what: str) -> _Number:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = parse(text)
    except ValueError:
        value = parse(0)
    if not 0 < value <= most:
        raise ConfigError(f"{name} must be {what}, not {text!r}")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name} must be true or false, not {value!r}")


def settings_from_mapping(env: Mapping[str, str]) -> Settings:
    """Build Settings from variables; each problem is one sentence naming the variable."""
    env = {key: value.strip() for key, value in env.items() if value is not None}
    level = (env.get("LOG_LEVEL") or "INFO").upper()  # empty is unset, as for every setting
    if level not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {env['LOG_LEVEL']!r}")
    service_config = Path(env["WINDMILL_SERVICE_CONFIG"]).expanduser() if env.get("WINDMILL_SERVICE_CONFIG") else None
    if service_config is not None and not service_config.is_file():
        raise ConfigError(f"WINDMILL_SERVICE_CONFIG points to {service_config}, which is not a file")
    roots = _image_roots(env.get("WINDMILL_IMAGE_ROOTS", ""))
    return Settings(
        database_url=password_from_file(database_url_of(env), env, "WINDMILL_DATABASE_PASSWORD_FILE",
                                         url_variable="WINDMILL_DATABASE_URL", host_variable="DB_HOST",
                                         inline="DB_PASSWORD"),
        amqp_url=password_from_file(amqp_url_of(env), env, "WINDMILL_AMQP_PASSWORD_FILE",
                                     url_variable="WINDMILL_AMQP_URL", host_variable="QUEUE_HOST",
                                     inline="QUEUE_PASSWORD"),
        home=Path(env["WINDMILL_HOME"]).expanduser() if env.get("WINDMILL_HOME") else DEFAULT_HOME,
        service_config=service_config,
        service_name=env.get("SERVICE_NAME") or None,
        worker_id=env.get("WORKER_ID") or f"{socket.gethostname()}-{os.getpid()}",
        log_level=level,
        port_offset=_offset(env),
        image_roots=roots,
        allow_private_urls=_flag(env, "WINDMILL_ALLOW_PRIVATE_URLS"),
        harmony=_harmony(env),
        amqp_management_url=with_a_port(management, "WINDMILL_AMQP_MANAGEMENT_URL")
        if (management := env.get("WINDMILL_AMQP_MANAGEMENT_URL")) else None,
        backfill_interval_s=_seconds(env, "WINDMILL_BACKFILL_INTERVAL_S", 60.0, 86_400),
        metrics_port=int(port_setting(env, "WINDMILL_METRICS_PORT", "")) if env.get("WINDMILL_METRICS_PORT") else None,
        backfill_page=_count(env, "WINDMILL_BACKFILL_PAGE", 1000, 1_000_000),
        submit_page=_count(env, "WINDMILL_SUBMIT_PAGE", Settings.submit_page, 100_000),
        job_retention_s=_seconds(env, "WINDMILL_JOB_RETENTION_S", 3600.0, 30 * 86_400),
        lost_task_after_s=_seconds(env, "WINDMILL_LOST_TASK_AFTER_S", LOST_TASK_AFTER_S, 30 * 86_400),
        amqp_task_attempts=_count(env, "WINDMILL_AMQP_TASK_ATTEMPTS", 5, 100),
        amqp_retry_delay_s=_seconds(env, "WINDMILL_AMQP_RETRY_DELAY_S", 1.0, 3600),
        database_wait_s=_seconds(env, "WINDMILL_DATABASE_WAIT_S", 30.0, 3600),
        # At most RabbitMQ's default consumer_timeout (30 min), past which it takes a held delivery back.
        outage_wait_s=_seconds(env, "WINDMILL_OUTAGE_WAIT_S", DEFAULT_OUTAGE_WAIT_S, 1800),
        service_max_bytes=_count(env, "WINDMILL_SERVICE_MAX_BYTES", SERVICE_MAX_REQUEST_BYTES, 1 << 40),
        decode_budget_bytes=_count(env, "WINDMILL_DECODE_BUDGET_BYTES", DECODE_BUDGET_BYTES, 1 << 40,
                                   least=MIN_DECODE_BUDGET_BYTES),
    )


# A URL setting and the seed's variables it replaces: with the URL set, those are not read (_database_url,
# _amqp_url), so `config` names them as ignored rather than as where the value came from.
REPLACED_BY_URL: dict[str, tuple[str, tuple[str, ...]]] = {
    "database_url": ("WINDMILL_DATABASE_URL", ("DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD")),
    "amqp_url": ("WINDMILL_AMQP_URL", ("QUEUE_HOST", "QUEUE_PORT", "QUEUE_USER", "QUEUE_PASSWORD", "QUEUE_VHOST")),
}


@dataclass(frozen=True)
class SettingsSource:
    """Where the settings came from: the settings file read (None: none was found), the places looked at in
    order, and which variables the file and the environment set."""

    env_file: Path | None
    searched: tuple[str, ...]
    from_file: frozenset[str]
    from_environment: frozenset[str]
    emptied_in_environment: frozenset[str] = frozenset()  # set in the file, but empty (so unset) in the environment

    def origin(self, setting: str) -> str:
        """Where a setting came from: `environment (X)`, the file's path with its variables, or `default`; then the
        seed's variables that its URL made ignored, if any were set."""
        url, replaced = REPLACED_BY_URL.get(setting, ("", ()))
        given = self.from_environment | self.from_file
        ignored = [name for name in replaced if name in given] if url in given else []
        variables = [name for name in SETTING_VARIABLES.get(setting, ()) if name not in ignored]
        parts = []
        in_environment = [name for name in variables if name in self.from_environment]
        in_file = [name for name in variables if name in self.from_file and name not in self.from_environment
                   and name not in self.emptied_in_environment]
        emptied = [name for name in variables if name in self.emptied_in_environment]
        if in_environment:
            parts.append(f"environment ({', '.join(in_environment)})")
        if in_file:
            parts.append(f"{self.env_file} ({', '.join(in_file)})")
        if emptied:
            parts.append(f"unset by the environment ({', '.join(emptied)} empty there, over {self.env_file})")
        if ignored:
            parts.append(f"ignored: {', '.join(ignored)} ({url} is set)")
        return "; ".join(parts) or "default"


def find_env_file(env_file: Path | None, environ: Mapping[str, str]) -> tuple[Path | None, tuple[str, ...]]:
    """The settings file to read, and what was looked at: `env_file` (--env-file) or WINDMILL_ENV_FILE, which must
    exist, else ./.env, else the system's file (SYSTEM_ENV_FILE, or WINDMILL_SYSTEM_ENV_FILE) when they exist."""
    named = [("--env-file", env_file)]
    if environ.get("WINDMILL_ENV_FILE", "").strip():
        named.append(("WINDMILL_ENV_FILE", Path(environ["WINDMILL_ENV_FILE"].strip()).expanduser()))
    for how, path in named:
        if path is None:
            continue
        if not path.is_file():
            raise ConfigError(f"the env file {path} ({how}) does not exist" if how == "--env-file"
                              else f"{how} names {path}, which does not exist")
        return path.absolute(), (f"{how} {path}",)
    system = Path(environ.get("WINDMILL_SYSTEM_ENV_FILE", "").strip() or SYSTEM_ENV_FILE).expanduser()
    searched = (str(Path(".env")), str(system))
    for candidate in (Path(".env"), system):
        if candidate.is_file():
            return candidate.absolute(), searched
    return None, searched


class _UnparsedLines(logging.Filter):
    """Takes python-dotenv's warning of a line it could not parse (which names no file) and keeps its line number."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "could not parse" not in record.getMessage():
            return True
        self.lines.extend(str(arg) for arg in record.args or ())
        return False


def read_env_file(path: Path) -> dict[str, str]:
    """The settings file's variables; a line python-dotenv cannot parse sets nothing and is named in a warning
    with the file it is in."""
    unparsed = _UnparsedLines()
    dotenv_log = logging.getLogger("dotenv.main")
    dotenv_log.addFilter(unparsed)
    try:
        values = dotenv_values(path)
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not a text file in UTF-8 (the byte at offset {error.start} is not UTF-8): a "
                          "settings file holds lines of NAME=value") from None
    except OSError as error:  # e.g. /etc/windmill/windmill.env, mode 600, read by another user than its owner
        raise ConfigError(f"cannot read the settings file {path}: {error.strerror or error}") from None
    finally:
        dotenv_log.removeFilter(unparsed)
    if unparsed.lines:
        one = len(unparsed.lines) == 1
        log.warning("%s: could not parse %s %s; %s ignored", path, "line" if one else "lines",
                    ", ".join(unparsed.lines), "it is" if one else "they are")
    return {k: v for k, v in values.items() if v is not None}


def load_configuration(env_file: Path | None = None,
                       environ: Mapping[str, str] | None = None) -> tuple[Settings, SettingsSource]:
    """Settings from the environment over the settings file (find_env_file), and where each came from."""
    environ = os.environ if environ is None else environ
    path, searched = find_env_file(env_file, environ)
    from_file = read_env_file(path) if path is not None else {}
    settings = settings_from_mapping({**from_file, **environ})
    # An empty value sets nothing (the readers take `KEY=` as unset), in the file as in the environment.
    source = SettingsSource(path, searched, frozenset(k for k, v in from_file.items() if v),
                            frozenset(k for k, v in environ.items() if v),
                            frozenset(k for k, v in environ.items() if not v and from_file.get(k)))
    return settings, source


def load_settings(env_file: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment over the settings file: --env-file, WINDMILL_ENV_FILE, ./.env or
    /etc/windmill/windmill.env, the first that exists."""
    return load_configuration(env_file, environ)[0]


def configure_logging(settings: Settings, *, quiet: bool = False) -> None:
    """Log lines on stderr at LOG_LEVEL; `quiet` (`windmill-cli -q`) keeps only warnings and errors."""
    level = logging.getLevelName(settings.log_level)
    if quiet:
        level = max(level, logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(max(logging.WARNING, level))  # a line per request
    # pika logs each broker failure again, in several ERROR lines with a traceback, where Windmill's own line says
    # what failed and what it does next (a refused login: one sentence): its lines are a developer's, at DEBUG.
    logging.getLogger("pika").setLevel(level if level <= logging.DEBUG else logging.CRITICAL)
