"""Packaging: the hand-written package list in pyproject.toml names every package, so the wheel is complete."""

from __future__ import annotations

import tomllib

from tests.conftest import REPOSITORY


def test_every_windmill_package_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(REPOSITORY).parts)
        for init in (REPOSITORY / "windmill").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert on_disk <= listed, f"add to pyproject packages: {sorted(on_disk - listed)}"
    assert {"windmill.sql", "windmill.deploy"} <= listed
