"""Per-image serialisation of recomputes: transaction-scoped advisory locks, one namespace per product."""

from __future__ import annotations

from enum import IntEnum

import psycopg

from windmill.db.queries import query


class Product(IntEnum):
    MERGED_BOXES = 1
    CONSENSUS = 2
    CAPTION_SCORE = 3


def lock_image(conn: psycopg.Connection, product: Product, image_id: int) -> None:
    """Wait until no other transaction recomputes this product of this image; released at commit."""
    conn.execute(query("lock_image_product"), {"key": image_id * 4 + int(product)})
