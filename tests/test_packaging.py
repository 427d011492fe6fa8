"""Packaging: the wheel is complete (every package listed), installs `windmill-cli` and no top-level `cli` module,
and works without its extras, saying which one to install where it needs one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

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


@pytest.fixture(scope="module")
def fresh_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install .` (no extras) into a new virtual environment, from a copy of the sources (a build in the
    repository would leave build/ and egg-info behind)."""
    root = tmp_path_factory.mktemp("fresh-install")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "cli.py"):
        shutil.copy(REPOSITORY / name, source / name)
    for name in ("windmill", "sql", "deploy"):
        shutil.copytree(REPOSITORY / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(source)],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return venv


def test_a_fresh_install_has_windmill_cli_and_no_top_level_cli_module(fresh_install: Path) -> None:
    version = subprocess.run([str(fresh_install / "bin" / "windmill-cli"), "--version"], capture_output=True,
                             text=True, timeout=60)
    assert version.stdout.strip() == "windmill-cli, version 0.1.0", version.stderr
    [site_packages] = (fresh_install / "lib").glob("python3*/site-packages")
    [dist_info] = site_packages.glob("windmill_pipeline-*.dist-info")
    installed = {line.split(",")[0] for line in (dist_info / "RECORD").read_text().splitlines()}
    top_level = {Path(path).parts[0] for path in installed if not path.startswith("..")}
    assert top_level == {"windmill", dist_info.name}, top_level  # no `cli` module beside the package
    assert not (site_packages / "cli.py").exists()


@pytest.mark.parametrize("command", [["demo"], ["farm", "serve"]])
def test_without_the_simfarm_extra_the_stand_in_says_what_to_install(fresh_install: Path, tmp_path: Path,
                                                                    command: list[str]) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "WINDMILL_HOME": str(tmp_path / "home")}
    process = subprocess.run([str(fresh_install / "bin" / "windmill-cli"), *command], capture_output=True, text=True,
                             env=env, cwd=tmp_path, timeout=60)
    assert process.returncode == 1
    assert process.stderr.splitlines() == [
        "Error: The Animal Farm stand-in (farm serve, the demo, the benchmarks) needs the python-multipart package: "
        "pip install 'windmill-pipeline[simfarm]'"]


def test_cli_py_runs_the_same_application_from_a_checkout() -> None:
    process = subprocess.run([sys.executable, str(REPOSITORY / "cli.py"), "--version"], capture_output=True,
                             text=True, timeout=60, cwd=REPOSITORY)
    assert process.stdout.strip() == "cli.py, version 0.1.0", process.stderr
