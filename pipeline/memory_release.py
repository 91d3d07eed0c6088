"""Handing freed memory back to the operating system between the steps of a long run.

After a step frees many arrays, both allocators a process uses keep some of it: pyarrow's pool
(mimalloc) holds freed pages for reuse, and glibc's ``malloc`` keeps freed chunks inside its heaps
(and in one heap per thread that allocated), so the resident memory stays at the step's peak while
the next step allocates elsewhere. :func:`release_freed_memory` asks both to give back what is free:
``release_unused`` on Arrow's pool and glibc's ``malloc_trim(0)``, which returns every free page of
every heap. Each call costs about a millisecond; elsewhere than glibc it only releases Arrow's pool.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

import pyarrow as pa

__all__ = ["release_freed_memory"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, Windows)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    function: Callable[[int], int] = trim
    return function


def release_freed_memory() -> None:
    """Give memory freed by Arrow and by ``malloc`` back to the operating system.

    Call it after a step that freed large buffers, before one that allocates many; it frees nothing
    that is in use.
    """
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
