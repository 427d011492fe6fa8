"""Keep freed memory in the stand-in process instead of handing it back to the kernel after every request.

Each computed answer allocates and frees arrays of a few hundred KB to a few MB (metadata makes a dozen passes
over the pixels). glibc serves blocks above its mmap threshold with fresh mappings and trims a heap whose free
top passes the trim threshold, so request after request faulted those pages in again: on 640×480 benchmark
scenes the stand-in spent about a sixth of its CPU per request on it (kernel time zeroing pages). With both
thresholds raised, freed blocks wait on the heap for the next request (up to TRIM_THRESHOLD per arena).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit: larger blocks are still mapped
TRIM_THRESHOLD = 128 * 1024 * 1024
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_tuned = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); False where the C library is not glibc."""
    global _tuned
    if _tuned:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        applied = (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                   and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    except (OSError, AttributeError):
        return False
    _tuned = applied
    if not applied:
        log.debug("mallopt refused the thresholds", extra={"action": "simfarm_mallopt_refused"})
    return applied
