"""Where an export goes when `--out -` asks for standard output: the line formats stream there page by page, a COCO
document once it is whole (its parts wait in a temporary directory), so a pipe (`| jq`, `| gzip`) needs no file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import BinaryIO

STDOUT = Path("-")


def standard_output() -> BinaryIO:
    """The bytes side of standard output as it is now (a test runner may have replaced sys.stdout)."""
    return sys.stdout.buffer
