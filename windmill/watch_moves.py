"""Files renamed or moved inside a watched folder (`images watch`). A rename is the same picture under another name:
its image keeps its id, group and answers, and its recorded path and file name follow the file. Registration is by
path, so without this a renamed file was registered again and processed twice.

Only a move the file system reports with both ends inside the watched tree can be followed: a file moved out of it
(inotify says only that it left) keeps its image at the old path, as a deleted file's does; a file moved while no
watch ran is a new image at its new path (README: Streams)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from windmill.collection import printable, storable, unstorable_reason
from windmill.db.pipelined import pipelined_transaction
from windmill.db.queries import query

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Move:
    """A file renamed from `source` to `destination`, both resolved as registered paths are."""

    source: Path
    destination: Path


@dataclass(frozen=True)
class Moved:
    """What a move did to the collection: the image that follows the file (None: its source was no registered
    image) and the image whose file the move replaced (removed)."""

    move: Move
    image_id: int | None
    replaced_id: int | None = None


def follow_moves(conn: psycopg.Connection, moves: Sequence[Move]) -> list[Moved]:
    """Move the images of these files, in order (a swap through a third name works), in one transaction sent as
    one pipeline: a folder of ten thousand files renamed is two statements per file and one wait for the server.

    A file moved onto the path of another registered image replaced that image's file, which is gone for good: its
    answers describe a picture that is nowhere any more, and its path is the moved image's now (a path names one
    image), so it is removed with everything stored for it, as `images remove` does, with a warning."""
    followed: list[tuple[Move, psycopg.Cursor | None, psycopg.Cursor | None]] = []
    with pipelined_transaction(conn):
        for move in moves:
            if not storable(move.source):  # never registered: the destination is an arrival
                followed.append((move, None, None))
                continue
            if (problem := unstorable_reason(move.destination)) is not None:
                # The image stays at its old path, as if moved out of the tree.
                log.warning("%s was renamed to %s: %s", printable(move.source), printable(move.destination),
                            problem, extra={"action": "watch_skipped"})
                continue
            params = {"source": str(move.source), "destination": str(move.destination),
                      "filename": move.destination.name}
            followed.append((move, conn.execute(query("remove_image_replaced_by_move"), params),
                             conn.execute(query("move_image"), params)))
    outcomes = []
    for move, removal, update in followed:  # their results came with the COMMIT
        replaced = removal.fetchone() if removal is not None else None
        moved = update.fetchone() if update is not None else None
        outcome = Moved(move, moved[0] if moved else None, replaced[0] if replaced else None)
        if outcome.replaced_id is not None:
            log.warning("%s was moved onto %s: image %d, the file it replaced, is removed with what was stored for "
                        "it; image %d is now at %s", printable(move.source), printable(move.destination),
                        outcome.replaced_id, outcome.image_id, printable(move.destination),
                        extra={"action": "watch_replaced"})
        outcomes.append(outcome)
    return outcomes
