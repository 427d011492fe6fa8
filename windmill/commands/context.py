"""What every command shares: settings and catalog loaded on first use, one-sentence user errors, JSON output."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import psycopg
from psycopg.conninfo import conninfo_to_dict

from windmill.catalog import SELECTION_KEYWORDS, Catalog, configured_catalog
from windmill.db import BIGINT_MAX
from windmill.errors import WindmillError, first_line
from windmill.settings import Settings, SettingsSource, configure_logging, load_configuration

if TYPE_CHECKING:
    from windmill.api import Windmill
    from windmill.db.connect import Database


class AppContext:
    """Settings and catalog, loaded on first use so `--help` and `list-services` need no environment."""

    def __init__(self, env_file: Path | None, *, quiet: bool = False) -> None:
        self.env_file = env_file
        self.quiet = quiet  # -q: no INFO lines, no notices, no progress bars on stderr
        self.command: str | None = None  # the command being run (`images add`), for error messages
        self._database_announced = False

    @cached_property
    def configuration(self) -> tuple[Settings, SettingsSource]:
        context = click.get_current_context(silent=True)
        if context is not None:  # settings are first read inside the command: note which one it is
            self.command = " ".join(context.command_path.split()[1:]) or None
        settings, source = load_configuration(self.env_file)
        configure_logging(settings, quiet=self.quiet)
        return settings, source

    @property
    def settings(self) -> Settings:
        return self.configuration[0]

    @property
    def source(self) -> SettingsSource:
        """Which settings file was read, what was looked at, and where each setting came from."""
        return self.configuration[1]

    @cached_property
    def catalog_as_configured(self) -> Catalog:
        return configured_catalog(self.settings.service_config)

    @cached_property
    def catalog(self) -> Catalog:
        """The catalog as clients use it: WINDMILL_PORT_OFFSET points them at a stand-in farm."""
        return self.catalog_as_configured.with_port_offset(self.settings.port_offset)

    def announce_database(self) -> None:
        """Say once, on stderr, that no database is configured and the embedded one is used: on a host whose
        settings file was not found, a command would otherwise read an empty database without a word."""
        if self._database_announced or self.quiet or not self.settings.uses_embedded_database:
            return
        self._database_announced = True
        from windmill.db.embedded import EmbeddedPostgres

        where = EmbeddedPostgres(self.settings.home).status().data_dir
        read = f"read {self.source.env_file}" if self.source.env_file else "found no settings file"
        click.echo(f"using the embedded database at {where} (no WINDMILL_DATABASE_URL or DB_HOST is set; "
                   f"{read}; looked at {', '.join(self.source.searched)})", err=True)

    def windmill(self, application_name: str = "windmill-cli", *, reading_only: bool = False) -> Windmill:
        """The Python API over these settings, to use in a `with` block: commands share its code paths.
        `reading_only`: for commands that write nothing, so the read-only monitor role can run them."""
        from windmill.api import Windmill

        self.announce_database()
        return Windmill(self.settings, catalog=self.catalog, application_name=application_name,
                        reading_only=reading_only)

    @contextmanager
    def database(self, application_name: str = "windmill-cli", *, reading_only: bool = False) -> Iterator[Database]:
        """The database with an up-to-date schema (the embedded one is migrated on first use)."""
        with self.windmill(application_name, reading_only=reading_only) as windmill:
            yield windmill.database

    @contextmanager
    def connection(self, *, reading_only: bool = False) -> Iterator[psycopg.Connection]:
        """A connection to an up-to-date schema."""
        with self.windmill(reading_only=reading_only) as windmill, windmill.connection() as conn:
            yield conn

    def refusal(self, error: psycopg.Error) -> str:
        """A database error as one sentence: what was refused, as which login, and how to fix it."""
        from windmill.db.connect import describe_conninfo
        from windmill.db.refusals import refusal

        url = self.settings.database_url
        login = str(conninfo_to_dict(url).get("user") or "") or None if url else None
        location = describe_conninfo(url) if url else "the embedded database"
        return refusal(error, command=self.command, login=login, location=location)


pass_app = click.make_pass_decorator(AppContext)

# Image and job ids are PostgreSQL bigints: a larger number is refused as an option's value, not sent to the server
# (which answered with a function signature that does not exist, and advice to run init-db).
ID_OR_ZERO = click.IntRange(0, BIGINT_MAX)
AN_ID = click.IntRange(1, BIGINT_MAX)
BIGINT = click.IntRange(-BIGINT_MAX - 1, BIGINT_MAX)  # an id looked up, where no such id is the answer


class WindmillGroup(click.Group):
    """User errors become one sentence on stderr and exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WindmillError as error:
            raise click.ClickException(str(error)) from None
        except psycopg.Error as error:  # every database error: windmill/db/refusals.py words it
            app = ctx.find_object(AppContext)
            if app is None:
                raise click.ClickException(f"database error: {first_line(error)}") from None
            raise click.ClickException(app.refusal(error)) from None
        except UnicodeEncodeError as error:
            if error.reason != "surrogates not allowed":
                raise
            raise click.ClickException(not_utf8_sentence(ctx, error)) from None


def not_utf8_sentence(ctx: click.Context, error: UnicodeEncodeError) -> str:
    """A command given text in another encoding (a Latin-1 name from an old camera, typed or pasted as a group, a
    path, a service): Python reads its bytes as surrogates, which PostgreSQL's UTF-8 text cannot hold, and the
    database driver refused to send it. Said as the rest of the collection says such names (`printable`)."""
    app = ctx.find_object(AppContext)
    command = app.command if app is not None else ctx.command_path
    from windmill.collection import printable

    text = error.object if isinstance(error.object, str) else str(error.object)
    return (f"`{command}` was given text that is not valid UTF-8, which the database cannot hold or look up: "
            f"'{printable(text)}' (a name in another encoding: give it in UTF-8, e.g. after renaming with convmv)")


def json_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(function)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=_json_value, ensure_ascii=False))


def _json_value(value: Any) -> Any:
    """What JSON cannot hold as it is: a PostgreSQL numeric (an age, a rate) as a number, anything else (a time, a
    path) as its text."""
    return float(value) if isinstance(value, Decimal) else str(value)


def print_services(catalog: Catalog, as_json: bool) -> None:
    if as_json:
        echo_json([{**{k: v for k, v in vars(s).items()}, "queue_name": s.queue_name} for s in catalog.services])
        return
    for category in ("primary", "spatial_only", "postprocessing"):
        click.echo(category.upper())
        for service in sorted(catalog.in_category(category), key=lambda s: s.name):
            kind = ",".join(service.service_type)
            click.echo(f"  {service.name:<14} {service.host}:{service.port:<6} {kind:<24} {service.description}")
    click.echo("Selections: " + "; ".join(f"{k} = {v}" for k, v in SELECTION_KEYWORDS.items())
               + "; or a comma-separated list of names")


def refuse_unknown(name: str | None, known: Iterable[str], kind: str) -> None:
    """After an option naming a queue or a service (`--queue`, `--service`) matched nothing: a name that is none of
    the known ones is most likely mistyped, so it gets one sentence naming them instead of an empty answer. Only
    then: a name outside the catalog that still has something (a service since removed from it, its queue) is
    listed, retried or replayed as any other."""
    names = sorted(set(known))
    if name is not None and name not in names:
        raise WindmillError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(names)}")  # the catalog's words
