"""Modules of one concern: no module of the package is over 500 lines (STYLE: god modules are a trap); cli.py
stays thin."""

from __future__ import annotations

from tests.conftest import REPOSITORY

LIMIT = 500


def module_lengths() -> dict[str, int]:
    return {
        str(path.relative_to(REPOSITORY)): len(path.read_text(encoding="utf-8").splitlines())
        for path in sorted((REPOSITORY / "windmill").rglob("*.py"))
    }


def test_no_module_of_the_package_is_over_500_lines() -> None:
    lengths = module_lengths()
    over = {path: lines for path, lines in lengths.items() if lines > LIMIT}
    assert not over, f"split these modules by concern: {over}"


def test_cli_py_stays_thin() -> None:
    """The commands live in windmill/commands/; the top-level cli.py only runs them."""
    assert len((REPOSITORY / "cli.py").read_text(encoding="utf-8").splitlines()) <= 300
