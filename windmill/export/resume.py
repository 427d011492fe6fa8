"""Continuing an output with `--after-id N`: what every resumable format (jsonl, csv, parquet) refuses, in one place.
An output that holds images up to L continues after N only when that writes every selected image once: not when it
already holds images after N (they would be written twice), nor when images of the selection lie after L up to N
(they would be left out without a word)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from windmill.errors import WindmillError


@dataclass(frozen=True)
class Continuation:
    """`--after-id` into an output that may already hold images. `first_between(after, through, with_boxes)`: the
    first image of the selection after `after` up to `through` (with a merged box, when `with_boxes`), None for
    none."""

    after_id: int
    first_between: Callable[[int, int, bool], int | None]

    def check(self, where: str, holds_through: int, *, rows_are_boxes: bool = False) -> None:
        """Refuse to continue `where`, which holds images up to `holds_through`, after `after_id`, naming the id to
        continue after. `rows_are_boxes`: the output has rows for boxes only (csv), so an image without a box is in
        it by having none, and ending before such images is no gap."""
        if holds_through > self.after_id:
            raise WindmillError(f"{where} already holds images up to {holds_through}, after --after-id "
                                f"{self.after_id}; continue with --after-id {holds_through}")
        if holds_through < self.after_id:
            missing = self.first_between(holds_through, self.after_id, rows_are_boxes)
            if missing is not None:
                raise WindmillError(f"{where} ends at image {holds_through}: --after-id {self.after_id} would leave "
                                    f"out image {missing} (and any others of the selection up to {self.after_id}); "
                                    f"continue with --after-id {holds_through}")
