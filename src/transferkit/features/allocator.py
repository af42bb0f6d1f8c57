"""Keep large tensor allocations in the heap during extraction (glibc only).

glibc serves every allocation above ``M_MMAP_THRESHOLD`` (128 KiB to 32 MiB, adaptive) with a fresh
``mmap`` and returns it with ``munmap`` on free. A CNN forward pass allocates and frees activation
tensors of several MB per layer per batch, so every batch touches fresh pages: measured on
mobilenetv2_100, 64 x 224 px, 3 batches on CPU: 1.7 M minor page faults and 3.6 s of system time,
against 53 k faults and 0.1 s with the thresholds raised (benchmarks/profile_rank.py, issue 16).
Raising ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` makes freed activations reusable heap memory;
the price is that up to ``trim`` bytes of freed memory stay with the process until it ends.

Set ``TRANSFERKIT_MALLOPT=0`` to leave the allocator alone. No effect (and no error) off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["keep_allocations_in_heap"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done: bool | None = None


def keep_allocations_in_heap(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 30) -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True when they are (now) raised."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("TRANSFERKIT_MALLOPT", "1") == "0" or platform.system() != "Linux" \
            or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _done = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and \
            bool(libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
    except (OSError, AttributeError):
        _done = False
    return _done
