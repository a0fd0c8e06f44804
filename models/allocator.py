"""glibc allocator setting for CPU inference with the renderer."""
from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (malloc.h)


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Have glibc serve tensors up to `limit` bytes from its heap and keep up to `limit` bytes freed at the heap's
    top, instead of mapping fresh pages for large tensors and handing them back on free.

    The renderer's CPU pass allocates and frees 12 MB tensors for every layer of every chunk of references; with
    glibc's adaptive defaults some of them land on fresh pages, whose zero-fill faults cost about 0.5 ms per MB
    on the 2-core machine, more than the elementwise work on them. bench/renderer.py, N=25, after the N=3 rows:
    8.43 s per frame by default, 7.34 s with this setting (one run each). Process-wide, as LD_PRELOAD-ing
    jemalloc would be; returns False where there is no glibc or it refuses the values.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, limit)) and bool(libc.mallopt(M_TRIM_THRESHOLD, limit))
    except (OSError, AttributeError):
        return False
