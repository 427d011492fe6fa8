"""The `windmill-cli` command line: click commands grouped by concern, assembled into `main`.

Each module holds the commands of one concern; commands parse options, call the package, print. A new command
goes into the module of its concern (or a new module listed below) as a click command or group; `main` adds it.
"""

from __future__ import annotations

from pathlib import Path

import click

from windmill import DISTRIBUTION
from windmill.commands import bench, collection, configuration, farm, ingest, monitoring, results, workers
from windmill.commands.context import AppContext, WindmillGroup


@click.group(cls=WindmillGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--env-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Read settings from this file (default: WINDMILL_ENV_FILE, else ./.env, else "
                   "/etc/windmill/windmill.env, the first that exists).")
@click.option("-q", "--quiet", is_flag=True,
              help="Only warnings and errors on stderr: no INFO log lines, notices or progress bars.")
@click.version_option(package_name=DISTRIBUTION)
@click.pass_context
def main(ctx: click.Context, env_file: Path | None, quiet: bool) -> None:
    """Windmill: every image through every Animal Farm ML service, harmonized boxes and consensus in
    PostgreSQL."""
    ctx.obj = AppContext(env_file, quiet=quiet)


for _module in (configuration, collection, workers, monitoring, ingest, results, farm, bench):
    for _command in _module.COMMANDS:
        main.add_command(_command)

__all__ = ["main"]
