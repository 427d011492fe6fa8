"""Commands for settings, the service catalog, the schema and the embedded database."""

from __future__ import annotations

import click

from windmill.commands.context import AppContext, echo_json, json_option, pass_app, print_services


@click.command()
@json_option
@pass_app
def config(app: AppContext, as_json: bool) -> None:
    """Print the effective settings (passwords masked) and where each came from: the environment, the settings
    file (--env-file, WINDMILL_ENV_FILE, ./.env or /etc/windmill/windmill.env, the first that exists), or the
    default."""
    source = app.source
    origins = {name: source.origin(name) for name in app.settings.as_json()}
    if as_json:
        echo_json({"settings": app.settings.as_json(), "sources": origins,
                   "env_file": str(source.env_file) if source.env_file else None, "searched": list(source.searched)})
        return
    if source.env_file:
        click.echo(f"settings file: {source.env_file}")
    else:
        click.echo(f"settings file: none found (looked at {', '.join(source.searched)})")
    shown = app.settings.shown()
    width = max(map(len, shown))
    for key, value in shown.items():
        click.echo(f"{key.ljust(width)}  {value}  [{origins[key]}]")


@click.command("list-services")
@json_option
@pass_app
def list_services(app: AppContext, as_json: bool) -> None:
    """Print the service catalog by category."""
    print_services(app.catalog, as_json)


@click.command("init-db")
@json_option
@pass_app
def init_db(app: AppContext, as_json: bool) -> None:
    """Create or upgrade the schema (idempotent, never drops data) and sync the services table."""
    from windmill.db.connect import open_database
    from windmill.db.schema import init_database

    app.announce_database()
    with open_database(app.settings, application_name="windmill-cli") as database, database.connect() as conn:
        applied = init_database(conn, app.catalog)
        where = database.location
    names = [f"{m.version:04d}_{m.name}" for m in applied]
    if as_json:
        echo_json({"database": where, "applied": names})
    elif applied:
        click.echo(f"Applied {len(applied)} migration(s) on {where}: " + ", ".join(names))
    else:
        click.echo(f"Schema on {where} is up to date.")


@click.group()
def db() -> None:
    """The embedded PostgreSQL cluster used when no database is configured."""


@db.command("status")
@json_option
@pass_app
def db_status(app: AppContext, as_json: bool) -> None:
    """Say whether the embedded cluster runs, where, and how to reach it with psql."""
    from windmill.db.embedded import EmbeddedPostgres

    if not app.settings.uses_embedded_database:
        click.echo("A database is configured (WINDMILL_DATABASE_URL or DB_HOST); the embedded cluster is unused.")
        return
    status = EmbeddedPostgres(app.settings.home).status()
    if as_json:
        echo_json({**vars(status), "psql": status.psql_command() if status.running else None})
        return
    click.echo(f"data directory: {status.data_dir}")
    click.echo(f"log file:       {status.log_file}")
    if status.running:
        click.echo(f"running on port {status.port}, used by {len(status.clients)} windmill process(es)")
        click.echo(f"connect with:   {status.psql_command()}")
    else:
        click.echo("not running (any windmill-cli command that needs it starts it)")


@db.command("stop")
@pass_app
def db_stop(app: AppContext) -> None:
    """Stop the embedded cluster now, even if workers still use it."""
    from windmill.db.embedded import EmbeddedPostgres

    if EmbeddedPostgres(app.settings.home).stop():
        click.echo("Embedded PostgreSQL stopped.")
    else:
        click.echo(f"The embedded PostgreSQL of {app.settings.home} was not running; nothing to stop.")


COMMANDS = (config, list_services, init_db, db)
