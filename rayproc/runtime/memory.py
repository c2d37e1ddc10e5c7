"""Keep freed heap memory in the process, so batch after batch does not page-fault it back in.

Network inference allocates and frees the same tens of MB of activations per batch. With
glibc's defaults, blocks above a dynamic threshold are mmap-ed and returned to the kernel on
free, and the heap top is trimmed, so every batch touches fresh pages: on the 2-core
development VM a sliding-window run of the BCDI network took about 240,000 minor page faults
and ran 1.4x slower than with freed memory kept (`benchmarks/inpaint_vs_monai.py
--compare-allocators`). :func:`retain_freed_memory` raises both thresholds with ``mallopt``; blocks
above ``mmap_threshold`` (whole volumes) are still mapped and returned to the kernel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3


@functools.lru_cache(maxsize=None)
def retain_freed_memory(mmap_threshold: int = 64 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); False where not glibc.

    Parameters
    ----------
    mmap_threshold : int
        Allocations at least this large (bytes) are mmap-ed (and unmapped on free).
    trim_threshold : int
        Free memory at the heap top kept before it is returned to the kernel (bytes).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt)
        return False
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(
        mallopt(M_TRIM_THRESHOLD, int(trim_threshold)))


__all__ = ["retain_freed_memory"]
