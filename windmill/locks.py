"""Per-image serialisation of recomputes: transaction-scoped advisory locks, one namespace per product."""

from __future__ import annotations

from enum import IntEnum

import psycopg

from windmill.db.queries import query


class Product(IntEnum):
    """A product's namespace of image_lock_key (sql/0105), which derives the keys; 0 is the triggers' vote gate."""

    MERGED_BOXES = 1
    CONSENSUS = 2
    CAPTION_SCORE = 3


def lock_image(conn: psycopg.Connection, product: Product, image_id: int) -> None:
    """Wait until no other transaction recomputes this product of this image; released at commit."""
    conn.execute(query("lock_image_product"), {"image_id": image_id, "product": int(product)})
