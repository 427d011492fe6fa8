"""What an image problem becomes: a permanent `BadImage`, or a passing `ImageUnavailable`, with a one-line reason."""

from __future__ import annotations

import re

from windmill.errors import WindmillError

MAX_REASON_CHARS = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


def one_line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """Collapse control characters and runs of spaces, then truncate with an ellipsis."""
    flat = " ".join(_CONTROL.sub(" ", text).split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def describe_size(count: int) -> str:
    """A byte count as a reason shows it: `40 MiB`, `12 KiB`, `900 bytes`; a count past a GiB, as a lying
    Content-Length declares, `90,949,470 TiB` (it read `9.53674e+13 MiB`)."""
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3)):
        if count >= size:
            value = count / size
            return f"{value:,.0f} {unit}" if value >= 1000 else f"{round(value, 1):g} {unit}"
    if count >= 1024 * 1024:
        return f"{round(count / (1024 * 1024), 1):g} MiB"
    if count >= 1024:
        return f"{round(count / 1024):d} KiB"
    return f"{count} bytes"


class BadImage(WindmillError):
    """The image cannot be loaded, decoded or sent: retrying the same input cannot help."""

    retryable = False

    def __init__(self, reason: str) -> None:
        self.reason = one_line(reason)
        super().__init__(self.reason)


class ImageUnavailable(WindmillError):
    """The image could not be downloaded for a reason that may pass (HTTP 5xx, 429 or 408, a timeout, a connection
    refused or broken, a DNS server not answering): the task is tried again later, a bounded number of times."""

    retryable = True

    def __init__(self, reason: str) -> None:
        self.reason = one_line(reason)
        super().__init__(self.reason)
