"""jsonb in and out of PostgreSQL with orjson. Every answer, box set and vote is a JSON document written once
and read again by the merger and the consensus worker; the standard library's encoder took a tenth of those
workers' CPU (about 40 µs per answer where orjson needs 3)."""

from __future__ import annotations

from typing import Any

import orjson
from psycopg.abc import AdaptContext
from psycopg.types.json import set_json_dumps, set_json_loads


def dumps(value: Any) -> bytes:
    """As json.dumps would store it, keys that are not strings included (they become strings)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def as_stored(value: Any) -> Any:
    """`value` as it reads back from a jsonb column (tuples become lists, keys strings): to compare with a row."""
    return orjson.loads(dumps(value))


def use_orjson(context: AdaptContext) -> None:
    """Make `context` (a connection, or a cursor) dump and load json/jsonb with orjson."""
    set_json_dumps(dumps, context)
    set_json_loads(orjson.loads, context)
