"""jsonb through Windmill's connections (orjson) stores what the standard library's json would."""

from __future__ import annotations

import json

from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from windmill.db.connect import Database

DOCUMENT = {"predictions": [{"label": "person", "confidence": 0.91, "bbox": (1, 2, 30, 40), "emoji": "🧑"}],
            "text": "café ñ \u00a0\"quoted\"", 3: True, None: [], "nested": {"empty": {}, "big": 2**62}}


def test_connections_and_pool_store_and_read_json_as_the_standard_library_would(database: Database,
                                                                                pool: ConnectionPool) -> None:
    expected = json.loads(json.dumps(DOCUMENT))  # tuples become lists, keys become strings
    with database.connect() as conn:
        assert conn.execute("SELECT %s::jsonb", (Jsonb(DOCUMENT),)).fetchone()[0] == expected
        assert conn.execute("SELECT %s::jsonb ->> 'text'", (Jsonb(DOCUMENT),)).fetchone()[0] == DOCUMENT["text"]
    with pool.connection() as conn:
        assert conn.execute("SELECT %s::jsonb", (Jsonb(DOCUMENT),)).fetchone()[0] == expected
        assert conn.execute("SELECT '{\"a\": [1.5, null]}'::json").fetchone()[0] == {"a": [1.5, None]}
