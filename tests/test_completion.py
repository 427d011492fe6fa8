"""Shell completion through the installed `windmill-cli`, as bash, zsh and fish ask for it: commands complete, and
so do worker names, service names and selections (comma lists too) and roles; the documented source commands print
each shell's script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("windmill-cli")


def complete(words: str, tmp_path: Path, shell: str = "bash") -> list[str]:
    """What the shell would be offered for the last word of `words` (bash's and zsh's protocol)."""
    if not SCRIPT.exists():
        pytest.fail(f"{SCRIPT} is missing: install Windmill into this environment (tests/run.sh does)")
    env = {**os.environ, "_WINDMILL_CLI_COMPLETE": f"{shell}_complete", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
           "WINDMILL_HOME": str(tmp_path / "home")}
    shown = subprocess.run([str(SCRIPT)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                           check=True)
    if shell == "bash":  # "type,value" per line
        return [line.split(",", 1)[1] for line in shown.stdout.splitlines()]
    lines = shown.stdout.splitlines()  # zsh: type, value, help per completion
    return [lines[i + 1] for i in range(0, len(lines), 3)]


def test_worker_names_complete_and_are_not_offered_twice(tmp_path: Path) -> None:
    assert complete("windmill-cli workers start mer", tmp_path) == ["merger"]
    assert complete("windmill-cli workers stop merger m", tmp_path) == ["metadata"]
    assert complete("windmill-cli workers run post", tmp_path, shell="zsh") == [
        "postprocess_colors", "postprocess_face", "postprocess_pose"]


def test_services_complete_as_names_selections_and_comma_lists(tmp_path: Path) -> None:
    assert complete("windmill-cli submit --services f", tmp_path) == ["full_catalog", "face"]
    assert complete("windmill-cli submit -s yolov8,r", tmp_path) == ["yolov8,rtdetr"]
    assert complete("windmill-cli worker --role service --service po", tmp_path) == ["pose"]


def test_roles_complete(tmp_path: Path) -> None:
    assert complete("windmill-cli worker --role m", tmp_path) == ["merger"]


@pytest.mark.parametrize(("shell", "marker"), [("bash", "complete -o"), ("zsh", "compdef"), ("fish", "complete")])
def test_each_shell_gets_its_script(tmp_path: Path, shell: str, marker: str) -> None:
    script = subprocess.run([str(SCRIPT)], env={**os.environ, "_WINDMILL_CLI_COMPLETE": f"{shell}_source"},
                            capture_output=True, text=True, timeout=60, check=True).stdout
    assert marker in script and "_WINDMILL_CLI_COMPLETE" in script
