"""WINDMILL_IMAGE_ROOTS against a race: a directory on an image's path swapped for a symlink out of the roots between
the check of the path and its opening must not let the outside file be read (O_NOFOLLOW guards the last component
only)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import pytest

from windmill.images import BadImage
from windmill.images.load import read_image_file

INSIDE, OUTSIDE = b"inside the roots", b"OUTSIDE the roots"


@pytest.mark.parametrize("proc", [True, False], ids=["linux-proc", "no-proc"])
def test_a_directory_swapped_for_a_symlink_out_never_lets_the_outside_file_be_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proc: bool) -> None:
    if not proc:  # a system without /proc/self/fd: the opened file is compared with the path resolved again
        readlink = os.readlink

        def no_proc(path: str | os.PathLike[str]) -> str:
            if os.fspath(path).startswith("/proc/"):
                raise FileNotFoundError(path)
            return readlink(path)

        monkeypatch.setattr(os, "readlink", no_proc)
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "kept").mkdir(parents=True)
    outside.mkdir()
    (root / "kept" / "a.jpg").write_bytes(INSIDE)
    (outside / "a.jpg").write_bytes(OUTSIDE)
    swapped = root / "sub"
    stop = threading.Event()

    def swap() -> None:  # root/sub: the real directory, then a symlink to outside, over and over
        while not stop.is_set():
            os.rename(root / "kept", swapped)
            os.rename(swapped, root / "kept")
            os.symlink(outside, swapped)
            os.unlink(swapped)

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    read: list[bytes] = []
    try:
        # 1.5 s of reads, and on until one found the real directory (within 15 s): on loaded cores a whole 1.5 s of
        # them once met only the link or no file.
        start = time.monotonic()
        while time.monotonic() - start < 1.5 or (INSIDE not in read and time.monotonic() - start < 15):
            with contextlib.suppress(BadImage):  # a refusal, or no file at the moment: both fine
                read.append(read_image_file(swapped / "a.jpg", roots=[root]))
    finally:
        stop.set()
        swapper.join()
    assert OUTSIDE not in read, f"the outside file was read {read.count(OUTSIDE)} times of {len(read)}"
    assert INSIDE in read  # the race ran: some reads found the real directory
