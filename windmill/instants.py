"""Instants given on the command line (`export --since`, `images remove --added-before`): ISO 8601, local time when
no zone is given."""

from __future__ import annotations

import datetime as dt

from windmill.errors import WindmillError


def parse_instant(text: str, option: str) -> dt.datetime:
    """`text` as an aware datetime; a WindmillError naming `option` when it is no ISO 8601 instant."""
    try:
        instant = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise WindmillError(f"{option} takes an ISO 8601 instant such as 2026-11-29T05:00:00Z, not {text!r}") from None
    return instant if instant.tzinfo is not None else instant.astimezone()
