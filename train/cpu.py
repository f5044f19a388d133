"""Process settings that make CPU training faster on Linux."""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Stop glibc from returning activation buffers to the kernel after every step.

    By default each large tensor is its own mmap; freeing it unmaps it, and the next step's
    allocation faults in fresh zeroed pages. On a 2-core machine that kernel work was ~30% of
    an EfficientNet-Lite0 training step (measured: 5.9 s -> 4.2 s for 4 steps of batch 16).
    The cost is that peak memory stays reserved by the process. Returns True when applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl and other C libraries have no mallopt
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)
    return bool(ok)
