"""Permission checks made as an ordinary user even when the tests run as root (CI does, where root reads every file
and lists every directory, so a test of an unreadable one could only be skipped).

`as_nobody()` sets the process's effective user and group to nobody's for the block and back to root's after: the
kernel checks file access by the effective ids, and root may take its own back (the real and saved ids stay 0).
Keep the block short and let it touch only what it tests: the ids are the whole process's, every thread's.
`open_folder()` is a folder that the user nobody can reach (pytest's tmp_path lies under root's own 0700
directory).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NOBODY = 65534  # Debian's nobody and nogroup


@contextmanager
def as_nobody() -> Iterator[None]:
    """The block runs with nobody's effective ids when the process is root's; as it is otherwise."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@contextmanager
def open_folder() -> Iterator[Path]:
    """A new folder under the system's temporary directory that every user may enter and list, removed after."""
    folder = Path(tempfile.mkdtemp(prefix="windmill-unprivileged-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        # Opened up again first: an ordinary user's rmtree cannot enter a directory of mode 0. Top-down, each
        # directory is opened before the walk goes into it.
        for parent, directories, _files in os.walk(folder):
            for name in directories:
                os.chmod(os.path.join(parent, name), 0o755)
        shutil.rmtree(folder)
