"""Shell completion of the values operators type most: worker names, service names and selections, roles.

click completes commands and options by itself once the shell loads its script (README, "Shell completion"); these
functions, passed as `shell_complete=`, add the values. Completion runs before any command, with no AppContext: the
settings are read here (the catalog they name gives the services and workers), and a setting that cannot be read
falls back to the bundled catalog rather than breaking the shell.
"""

from __future__ import annotations

from pathlib import Path

import click
from click.shell_completion import CompletionItem

from windmill.catalog import SELECTION_KEYWORDS, Catalog, configured_catalog, load_catalog
from windmill.errors import WindmillError


def _catalog(ctx: click.Context) -> Catalog:
    from windmill.settings import load_settings

    root = ctx.find_root()
    env_file = root.params.get("env_file")
    try:
        return configured_catalog(load_settings(Path(env_file) if env_file else None).service_config)
    except WindmillError:
        return load_catalog()


def _matching(values: list[str], incomplete: str, prefix: str = "") -> list[CompletionItem]:
    return [CompletionItem(prefix + value) for value in values if value.startswith(incomplete)]


def worker_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The named workers of this machine (`workers start|stop|restart|status|health|run NAME`), less those already
    named on the line."""
    from windmill.worker.layout import machine_workers

    named = set(ctx.params.get(param.name or "", None) or ())
    return _matching([name for name in machine_workers(_catalog(ctx)) if name not in named], incomplete)


def services(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """A selection keyword, or service names of a comma list (`yolov8,bl` completes to `yolov8,blip`)."""
    head, _, last = incomplete.rpartition(",")
    names = [service.name for service in _catalog(ctx).services]
    if not head:
        return _matching([*SELECTION_KEYWORDS, *names], last)
    chosen = set(head.split(","))
    return _matching([name for name in names if name not in chosen], last, prefix=head + ",")


def roles(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    from windmill.roles.registry import role_summaries

    return [CompletionItem(name, help=summary) for name, summary in role_summaries().items()
            if name.startswith(incomplete)]
