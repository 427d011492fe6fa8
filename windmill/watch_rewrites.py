"""Files written again at the path they were registered under (`images watch`): an upload tool re-uploading a
corrected photo, a camera overwriting, `cp new.jpg a.jpg`, exiftool rewriting in place. Registration is by path,
so such a file was never processed again and its answers, boxes and consensus described a picture that no longer
exists.

A file whose content was replaced is a new picture at an old path, handled as a file moved onto a registered one
is (watch_moves): the image of the old content is removed with everything stored for it, as `images remove` does,
and the new content is registered at the path as a new image (a new id, in the old image's group) and queued. A new
id, rather than the old one with its products dropped, because the old content's tasks still in flight (a RabbitMQ
message, a job a worker holds, an image a worker has cached by id) carry the old id: their answers then belong to
no image and are dropped (roles/service.py), where under the kept id they would be stored as the new picture's.

What is content: `judge` (pure) decides from the size and modification time recorded at registration, the file's
now, and what the watch heard (README: Streams)."""

from __future__ import annotations

import enum
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from windmill.collection import printable, register_files
from windmill.db.queries import query
from windmill.removal import retried_on_deadlock

log = logging.getLogger(__name__)

FileSignature = tuple[int, int]  # (size, mtime in ns)


@dataclass(frozen=True)
class Settled:
    """A file that settled: its signature then, and whether data was written to it while the watch followed it
    (`wrote`: True for a write, a creation or a file renamed onto it; False when the events heard were none of
    these, a touch or a chmod; None when it was found by a walk of the folder, with no event to say what happened
    while no watch ran)."""

    path: Path
    signature: FileSignature
    wrote: bool | None


@dataclass(frozen=True)
class Recorded:
    """A registered image of a file, with the signature recorded of its file (None: none recorded, `images add`)."""

    image_id: int
    signature: FileSignature | None
    group: str | None


class Verdict(enum.Enum):
    SAME = "same"  # nothing recorded has changed: a chmod, or a rename followed by the watch
    RECORD = "record"  # not new content (a touch), or nothing recorded yet: record what is there now
    REPLACED = "replaced"  # new content at the path


def judge(recorded: FileSignature | None, settled: Settled) -> Verdict:
    """Whether a registered file that settled again holds new content.

    Size and modification time as recorded: the same file (a rewrite that keeps both, as `exiftool -P` can, goes
    unseen). A size that differs: new content, whatever was heard. A time that moved alone: a touch when the watch
    heard no write (inotify tells a write, IN_MODIFY, from a change of attributes, IN_ATTRIB; `touch` also closes
    the file it opened for writing, so IN_CLOSE_WRITE says nothing), new content when it heard one. Found by the
    walk on start, no event says which it was: taken as new content, since answers that describe another picture
    are wrong where answering one picture twice only costs the calls. Nothing recorded (a file `images add`
    registered, or one registered before sql/0134): new content only when a write was heard."""
    if recorded is None:
        return Verdict.REPLACED if settled.wrote else Verdict.RECORD
    if recorded == settled.signature:
        return Verdict.SAME
    if settled.wrote is not False or recorded[0] != settled.signature[0]:
        return Verdict.REPLACED
    return Verdict.RECORD


@dataclass(frozen=True)
class Replacement:
    """A file whose content was replaced: the image of its old content, removed, and the new content's image."""

    path: Path
    removed_id: int
    image_id: int | None  # None: registered meanwhile by another (a second watch of the folder)


def recorded_files(conn: psycopg.Connection, paths: Iterable[Path]) -> dict[Path, Recorded]:
    """The registered images of these files, with what was recorded of each."""
    rows = conn.execute(query("recorded_files"), {"paths": [str(path) for path in paths]}).fetchall()
    return {Path(path): Recorded(image_id, None if size is None or mtime_ns is None else (size, mtime_ns), group)
            for image_id, path, size, mtime_ns, group in rows}


def record_signatures(conn: psycopg.Connection, files: Sequence[tuple[Recorded, Settled]]) -> None:
    """What the watch sees now of files whose content did not change, recorded for the next comparison."""
    if files:
        conn.execute(query("record_file_signatures"), {
            "ids": [recorded.image_id for recorded, _ in files],
            "sizes": [settled.signature[0] for _, settled in files],
            "mtimes": [settled.signature[1] for _, settled in files]})


def replace_content(conn: psycopg.Connection, files: Sequence[tuple[Recorded, Settled]]) -> list[Replacement]:
    """Remove the images of the old content of these files with everything stored for them, and register each
    file anew in its image's group, with its signature, in one transaction: no moment where the path has no image,
    and a stop between the two cannot lose the file. An image removed meanwhile (a second watch, `images remove`)
    is left to whoever removed it."""
    if not files:
        return []
    by_id = {recorded.image_id: (recorded, settled) for recorded, settled in files}

    def replace() -> list[int]:
        removed = [row[0] for row in conn.execute(query("remove_images"), {"ids": list(by_id)})]
        groups: dict[str | None, list[Settled]] = defaultdict(list)
        for image_id in removed:
            recorded, settled = by_id[image_id]
            groups[recorded.group].append(settled)
        for group, landed in groups.items():
            register_files(conn, [settled.path for settled in landed], group=group,
                           signatures={settled.path: settled.signature for settled in landed})
        return removed

    removed = retried_on_deadlock(conn, replace, f"replacing the content of {len(by_id)} image(s)")
    paths = [by_id[image_id][1].path for image_id in removed]
    now = {Path(row[1]): row[0] for row in conn.execute(query("recorded_files"),
                                                          {"paths": [str(path) for path in paths]})}
    replacements = [Replacement(path, image_id, now.get(path)) for image_id, path in zip(removed, paths, strict=True)]
    for replacement in replacements:
        log.warning("%s was written again: image %d, its old content, is removed with what was stored for it; the "
                    "new content is image %s", printable(replacement.path), replacement.removed_id,
                    replacement.image_id, extra={"action": "watch_content_replaced"})
    return replacements
