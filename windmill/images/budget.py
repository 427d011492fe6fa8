"""A process's memory for decoded pixels, shared by its threads: what a decode will take is reserved before it
starts, and a thread whose decode does not fit waits for the others' to end.

A worker runs several threads that decode images (a lane per service, four postprocess threads, caption scoring),
and an image at the pixel limit takes up to 684 MiB to prepare (upright.py): four at once took a worker past 2.5 GB,
the kernel killed it, and the leases gave the image to the next worker, which died the same way. With a budget the
decodes of one process hold at most its bytes at once, whatever the number of threads; an image whose decode alone
would take more is refused (a BadImage, its task's error row), never attempted. Ordinary photographs are far below
it: a 640 × 480 JPEG sent as it is reserves 20 KB (its 1/8-scale check), a 12 MP photo turned upright 96 MB.

Pixels handed out (to cut boxes from) keep their share until they are dropped (`Reservation.keep_for`), so two
threads do not each hold a huge image's pixels while a third decodes another. The cost is an estimate made from the
header alone (mode and size, before a pixel is decoded): Pillow's bytes a pixel for the decoded mode, plus the
8-bit copy a conversion or rotation makes (each step lets its input go: two copies at most).
"""

from __future__ import annotations

import gc
import math
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable

from PIL import Image

from windmill.images.errors import BadImage, describe_size
from windmill.settings import DECODE_BUDGET_BYTES

# A waiting decode looks again this often even if nobody woke it: pixels dropped in a reference cycle give their
# share back only when the garbage collector runs, and a waiting process may allocate nothing that would run it.
_RECHECK_S = 1.0
# Pillow's bytes a pixel by mode: 1-byte modes, 2-byte ones, and all others (RGB included) at 4.
_ONE_BYTE_MODES = ("1", "L", "P")
_RGB_BYTES = 4  # Pillow keeps RGB as 4 bytes a pixel
# Decoders that decode into a buffer of their own and copy it into Pillow's: their pixels are counted twice.
_COPYING_DECODERS = ("HEIF", "AVIF")
# Decodes that take less are not counted: at most this much a thread, and the lock would cost more than the decode of
# an ordinary photograph's 1/8-scale check (a 640 × 480 JPEG's: 19 KB; reserving it cost 4 µs of a 0.35 ms decode).
UNCOUNTED_BYTES = 1024 * 1024
_SHARE = "_windmill_decode_share"  # the attribute of pixels holding the finalizer that gives their share back


def bytes_per_pixel(mode: str) -> int:
    """Pillow's storage of one pixel of `mode`."""
    if mode in _ONE_BYTE_MODES:
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def decode_cost(mode: str, size: tuple[int, int], *, image_format: str = "", reduced: bool = False,
                converted: bool = False, to_rgb: bool = False) -> int:
    """The bytes a decode of an image of `mode` and `size` holds at its peak (pure).

    `reduced`: decoded at 1/8 scale (libjpeg's DCT scaling, a JPEG only checked whole); `converted`: made upright
    8-bit RGB (a conversion or a rotation: one more copy, of 4 bytes a pixel; a rotation of 8-bit grayscale, 1);
    `to_rgb`: the pixels handed out as RGB (a grayscale image's RGB copy)."""
    width, height = size
    if reduced:
        width, height = math.ceil(width / 8), math.ceil(height / 8)
    pixels = width * height
    decoded = bytes_per_pixel(mode) * (2 if image_format in _COPYING_DECODERS else 1)
    made = 0
    if converted:
        made = 1 if mode == "L" else _RGB_BYTES
    if to_rgb and mode != "RGB":
        made = max(made, _RGB_BYTES)
    return pixels * (decoded + made)


class Reservation:
    """A share of a budget, given back once: by `release`, or when the pixels it was kept for are dropped."""

    def __init__(self, budget: DecodeBudget, size: int) -> None:
        self._budget = budget
        self.size = size
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            size, self.size = self.size, 0
        if size:
            self._budget.give_back(size)

    def keep_for(self, pixels: Image.Image) -> None:
        """Keep only what `pixels` hold, until they are dropped (their finalizer gives it back)."""
        if not self.size:
            return
        kept = min(self.size, pixels.width * pixels.height * bytes_per_pixel(pixels.mode))
        with self._lock:
            freed, self.size = self.size - kept, kept
        if freed:
            self._budget.give_back(freed)
        setattr(pixels, _SHARE, weakref.finalize(pixels, self.release))


def give_back_share(pixels: Image.Image) -> None:
    """Give back now the share the pixels keep (Reservation.keep_for), for pixels another bound now holds."""
    finalizer = getattr(pixels, _SHARE, None)
    if finalizer is not None:
        finalizer()  # runs the release once; the finalizer is dead afterwards


class DecodeBudget:
    """The bytes the decodes of one process may hold at once. Decodes are let in first come, first served: a large
    one waiting is not overtaken by small ones for ever."""

    def __init__(self, capacity: int = DECODE_BUDGET_BYTES) -> None:
        if capacity < 1:
            raise ValueError("a decode budget needs at least one byte")
        self.capacity = capacity
        self.held = 0
        self.waited = 0  # decodes that had to wait (tests, metrics)
        self._turns: deque[object] = deque()
        self._changed = threading.Condition()

    def reserve(self, cost: int, image: Callable[[], str]) -> Reservation:
        """Reserve `cost` bytes, waiting for them if other decodes hold them. `image()` names it in the refusal: a
        `BadImage` when the cost alone is over the whole budget."""
        if cost > self.capacity:
            raise BadImage(f"image {image()} takes about {describe_size(cost)} to decode, over the"
                           f" {describe_size(self.capacity)} a worker may hold for decoding"
                           " (WINDMILL_DECODE_BUDGET_BYTES)")
        if cost <= UNCOUNTED_BYTES:
            return Reservation(self, 0)
        with self._changed:
            if not self._turns and self.held + cost <= self.capacity:
                self.held += cost
                return Reservation(self, cost)
            turn = object()
            self._turns.append(turn)
            self.waited += 1
            try:
                while self._turns[0] is not turn or self.held + cost > self.capacity:
                    if not self._changed.wait(_RECHECK_S):
                        gc.collect()  # shares of pixels caught in a reference cycle
                self.held += cost
            finally:
                self._turns.remove(turn)
                self._changed.notify_all()
        return Reservation(self, cost)

    def give_back(self, size: int) -> None:
        with self._changed:
            self.held -= size
            self._changed.notify_all()


# Pillow allocates pixels in blocks, of 16 MiB by default. glibc serves what is under 32 MiB from the allocating
# thread's arena and keeps it there once freed: each lane that had decoded a huge image kept its memory, and four
# lanes decoding one at a time held 2.5 images' worth (2.4 GB at the pixel limit), the budget notwithstanding.
# Blocks of 64 MiB are mapped for their image and unmapped when it goes; images under 64 MiB (every ordinary photo)
# are one allocation as before. PILLOW_BLOCK_SIZE, when set, decides instead.
PIXEL_BLOCK_BYTES = 64 * 1024 * 1024
if "PILLOW_BLOCK_SIZE" not in os.environ:
    Image.core.set_block_size(PIXEL_BLOCK_BYTES)

# The budget of the decodes given none (library calls, benchmarks): a worker's roles share their ImageSource's, the
# dashboard its Pictures', each of WINDMILL_DECODE_BUDGET_BYTES.
PROCESS_BUDGET = DecodeBudget()
