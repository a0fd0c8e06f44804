"""A process-wide glibc allocator setting that the renderer's CPU speed depends on.

Not a model's business: the entry points that run the renderer on CPU apply it (inference.py, evaluate.py's
generation mode, bench/). Its measured effect is in bench/README.md.
"""
from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (malloc.h)


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Have glibc serve tensors up to `limit` bytes from its heap and keep up to `limit` bytes freed at the heap's
    top, instead of mapping fresh pages for large tensors and handing them back on free.

    The renderer's CPU pass allocates and frees 12 MB tensors for every layer of every chunk of references; with
    glibc's adaptive defaults some of them land on fresh pages, whose zero-fill faults cost more than the
    elementwise work on them. Process-wide, as LD_PRELOAD-ing jemalloc would be; returns False where there is no
    glibc or it refuses the values.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, limit)) and bool(libc.mallopt(M_TRIM_THRESHOLD, limit))
    except (OSError, AttributeError):
        return False
