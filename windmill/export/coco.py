"""COCO export: one detection file of the merged boxes (images, annotations with score and the agreeing services,
categories named by the boxes' labels) that pycocotools, faster-coco-eval and FiftyOne load as they are; with
`--detectors`, each detector's raw boxes as a COCO results file beside it (`NAME.<service>.results.json`, a list of
{image_id, category_id, bbox, score}, for `COCO.loadRes`), using the same category ids.

The document is streamed: images go to the file as they are read, annotations and results to files of their own,
joined at the end; only the categories stay in memory. Files appear under their names only when complete."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import shutil
import tempfile
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, BinaryIO

from windmill import __version__
from windmill.box_names import box_label
from windmill.coco_classes import COCO_CATEGORY_IDS, category_name
from windmill.emoji import normalize_emoji
from windmill.errors import WindmillError
from windmill.evaluation import detector_predictions
from windmill.export.output import STDOUT, standard_output
from windmill.export.shapes import coco_box, coco_image, dumps
from windmill.export.source import ImageExport

NAMED_IDS_FROM = 1000  # above COCO's 1…90, so a label that is no COCO class never takes a class's id
# Up to 2**31 − 1: a positive int32, the widest id a COCO reader can be assumed to hold.
NAMED_IDS_SPAN = 2**31 - NAMED_IDS_FROM


def stable_category_id(label: str, taken: AbstractSet[int] = frozenset()) -> int:
    """A COCO class (`dining table`, `dining_table`, `Dining Table`: one name, category_name) has COCO's own id
    (1…90), as in COCO's files; any other label an id from 1000 to 2**31 − 1 drawn from its name (SHA-256). Only when
    two names of one export draw the same id (a chance of about N²/(2·NAMED_IDS_SPAN) among N names: 1.5 % at 8,000)
    does the one met second take the next free id."""
    name = category_name(label)
    coco = COCO_CATEGORY_IDS.get(name)
    if coco is not None:
        return coco
    # SHA-256 rather than CRC-32 over a million ids: of 7,962 plausible two-word labels, 38 pairs drew one CRC id,
    # and which of a pair got the next free one depended on the order an export met them.
    drawn = NAMED_IDS_FROM + int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") % NAMED_IDS_SPAN
    while drawn in taken:
        drawn = NAMED_IDS_FROM + (drawn - NAMED_IDS_FROM + 1) % NAMED_IDS_SPAN
    return drawn


def results_path(out: Path, service: str) -> Path:
    """Where a detector's results file goes beside the COCO file."""
    return out.with_name(f"{out.stem}.{service}.results.json")


class _JsonArray:
    """A JSON array written element by element to a hidden file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: BinaryIO = open(path, "wb")  # noqa: SIM115  (closed by close)
        self.count = 0

    def append(self, value: Any) -> None:
        self.handle.write((b",\n" if self.count else b"") + dumps(value))
        self.count += 1

    def close(self) -> None:
        self.handle.close()


class CocoWriter:
    def __init__(self, out: Path, *, detectors: bool, known_detectors: Iterable[str] = ()) -> None:
        self.out = out
        self.detectors = detectors
        self.known_detectors = tuple(known_detectors)  # whose results files an earlier export may have written
        self.removed: list[Path] = []  # results files of an earlier export, removed by finish
        self.not_removed: list[str] = []  # … or that could not be: "<file> (<why>)"
        self.categories: dict[str, dict[str, Any]] = {}  # category name (category_name) → category
        self._taken: set[int] = set()  # the categories' ids
        # Standard output gets the document once it is whole; its parts wait in a directory of their own.
        self._parts = Path(tempfile.mkdtemp(prefix="windmill-coco-")) if out == STDOUT else None
        try:
            self._images = _JsonArray(self._hidden(out, "images"))
            self._annotations = _JsonArray(self._hidden(out, "annotations"))
        except OSError as error:
            raise WindmillError(f"cannot write {out}: {error.strerror or error}") from None
        self._results: dict[str, _JsonArray] = {}
        self.left_out = 0  # images of no known size yet (no metadata answer): not in the file
        self.boxes_left_out = 0

    def _hidden(self, out: Path, part: str) -> Path:
        if self._parts is not None:
            return self._parts / f"{part}.tmp"
        return out.with_name(f".{out.name}.{part}.tmp")

    def category(self, label: str, emoji: str) -> int:
        """The category id of a label, by its name (category_name: `dining_table` is `dining table`, COCO's class 67):
        the same in every export (stable_category_id), so the files of a stream's incremental exports, or of two
        groups, can be read together, and a detector's results file scores against the merged boxes' categories."""
        name = category_name(label)
        if name not in self.categories:
            category_id = stable_category_id(name, self._taken)
            self._taken.add(category_id)
            # Normalised (windmill.emoji): the first box of a label gave its emoji as it came, 🍽️ in one export
            # and 🍽 in the next.
            self.categories[name] = {"id": category_id, "name": name, "supercategory": "object",
                                     "emoji": normalize_emoji(emoji)}
        return int(self.categories[name]["id"])

    def write_page(self, page: list[ImageExport]) -> int:
        left_out_before = self.left_out
        for item in page:
            entry = coco_image(item)
            if entry is None:
                self.left_out += 1
                self.boxes_left_out += len(item.boxes)
                continue
            self._images.append(entry)
            for row in item.boxes:
                data = row["merged_data"]
                annotation = coco_box(item.image_id, row["merged_id"], data,
                                      self.category(box_label(data), str(data.get("emoji") or "")))
                if annotation is not None:
                    self._annotations.append(annotation)
            if self.detectors:
                self._write_detections(item)
        return len(page) - (self.left_out - left_out_before)

    def _write_detections(self, item: ImageExport) -> None:
        rows = [(item.image_id, row["result_id"], row["service"], row["data"]) for row in item.detector_answers]
        for service, found in detector_predictions(rows, {item.image_id: item.image_id}).items():
            if service not in self._results:
                self._results[service] = _JsonArray(self._hidden(results_path(self.out, service), "results"))
            for prediction in found.predictions:
                label = prediction.labels[0] if prediction.labels else "object"
                self._results[service].append({
                    "image_id": item.image_id, "category_id": self.category(label, prediction.emoji),
                    "bbox": list(prediction.bbox), "score": prediction.confidence})

    def finish(self) -> list[Path]:
        for part in (self._images, self._annotations, *self._results.values()):
            part.close()
        header = {"info": {"description": "Windmill export: harmonized boxes", "version": __version__,
                           "date_created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")},
                  "licenses": []}
        if self._parts is not None:
            self._write_document(header, standard_output())
            shutil.rmtree(self._parts, ignore_errors=True)
            return [self.out]
        # Every file whole under a hidden name first, then each renamed into place: a full disk or a Ctrl-C on the
        # way leaves nothing under the names asked for (abort removes the hidden files).
        hidden = self._hidden(self.out, "document")
        with open(hidden, "wb") as document:
            self._write_document(header, document)
        listings = []
        for service, results in sorted(self._results.items()):
            with open(results.path, "rb") as elements, open(results.path.with_suffix(".list"), "wb") as listing:
                listing.write(b"[\n")
                shutil.copyfileobj(elements, listing)
                listing.write(b"\n]\n")
            listings.append((results.path.with_suffix(".list"), results_path(self.out, service)))
        for listing_path, final in listings:
            listing_path.rename(final)
        hidden.rename(self.out)
        for part in (self._images, self._annotations, *self._results.values()):
            part.path.unlink()
        self._remove_earlier_results()
        return [self.out, *(final for _, final in listings)]

    def _remove_earlier_results(self) -> None:
        """The results files beside the COCO file that this export did not write are an earlier export's, of its
        images, not this file's: read beside it they pass for its detectors' boxes, and pycocotools' loadRes refuses
        one that holds an image this file does not ("Results do not correspond to current coco set"). They go once
        the new file is in place; one that cannot go is named in the notes."""
        for service in self.known_detectors:
            if service in self._results:
                continue
            earlier = results_path(self.out, service)
            try:
                earlier.unlink()
            except FileNotFoundError:
                continue
            except OSError as error:
                self.not_removed.append(f"{earlier} ({error.strerror or error})")
                continue
            self.removed.append(earlier)

    def _write_document(self, header: dict[str, Any], document: BinaryIO) -> None:
        document.write(dumps(header)[:-1] + b',\n"images": [\n')
        _copy(self._images.path, document)
        document.write(b'\n],\n"annotations": [\n')
        _copy(self._annotations.path, document)
        document.write(b'\n],\n"categories": ' + dumps(list(self.categories.values())) + b"}\n")
        document.flush()

    def notes(self) -> list[str]:
        notes = []
        if self.left_out:
            boxes = f", with {self.boxes_left_out} merged box(es)," if self.boxes_left_out else ""
            notes.append(f"{self.left_out} image(s){boxes} left out of the COCO file: their size is not known yet (the "
                         "metadata service has not measured them: not processed, failed, or not an image)")
        if self.removed:
            notes.append(f"removed {', '.join(path.name for path in self.removed)}: an earlier export's results "
                         f"files beside {self.out.name}, which this export did not write (they would not match it)")
        if self.not_removed:
            notes.append(f"could not remove {', '.join(self.not_removed)}: an earlier export's results files beside "
                         f"{self.out.name}, which this export did not write (they would not match it)")
        return notes

    def abort(self, whole_through: int | None) -> int | None:
        """A COCO document is written whole or not at all: every part goes, whatever the disk says on closing."""
        for part in (self._images, self._annotations, *self._results.values()):
            with contextlib.suppress(OSError):  # its last flush fails on a full disk; the file is closed anyway
                part.close()
            with contextlib.suppress(OSError):
                part.path.unlink(missing_ok=True)
        for leftover in (self._hidden(self.out, "document"),
                         *(results.path.with_suffix(".list") for results in self._results.values())):
            with contextlib.suppress(OSError):
                leftover.unlink(missing_ok=True)
        if self._parts is not None:
            shutil.rmtree(self._parts, ignore_errors=True)
        return None


def _copy(path: Path, into: BinaryIO) -> None:
    with open(path, "rb") as source:
        shutil.copyfileobj(source, into)

