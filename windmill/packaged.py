"""Files that live at the top of the repository (sql/, deploy/) and ship inside the wheel."""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

_REPOSITORY = Path(__file__).resolve().parent.parent


def packaged_dir(name: str) -> Traversable:
    """`sql` or `deploy`: from the installed wheel (windmill.<name>), else from the source checkout."""
    try:
        return resources.files(f"windmill.{name}")
    except ModuleNotFoundError:
        # Source checkouts and editable installs: the directory sits beside the package.
        return _REPOSITORY / name
