"""Handing freed memory back to the operating system between the steps of a long run.

After a step frees many arrays, both allocators a process uses keep some of it: pyarrow's pool
(mimalloc) holds freed pages for reuse, and glibc's ``malloc`` keeps freed chunks inside its heaps
(and in one heap per thread that allocated), so the resident memory stays at the step's peak while
the next step allocates elsewhere. :func:`release_freed_memory` asks both to give back what is free:
``release_unused`` on Arrow's pool and glibc's ``malloc_trim(0)``, which returns every free page of
every heap. Each call costs about a millisecond; elsewhere than glibc it only releases Arrow's pool.

:func:`map_large_allocations` prevents most of that keeping in the first place. glibc gives an
allocation pages of its own (``mmap``, returned on ``free``) only above a threshold that starts at
128 KiB and rises to the size of each such block freed, up to 32 MiB. After a run's first tile
buffers are freed, later ones (1-25 MB: inputs, model activations, probabilities) come from
the heaps instead, where live small objects between them pin the freed space. The resident memory
then follows the highest point each thread's heap ever reached, and a long run reaches a higher
one than a short one. Fixing the threshold at :data:`LARGE_ALLOCATION_BYTES` keeps those buffers
out of the heaps. Measured on the full-tile bench's inference alone, on 2 cores: peak 1,724 ->
1,439 MB at 10,980 px, 1,386 -> 1,213 MB at 2,048 px. The cost is 5-10 % more wall, from faulting
in fresh pages. Below 4 MiB that cost grows fast (at 1 MiB: 1,009 MB but 1.6x the wall).
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable

import pyarrow as pa

__all__ = ["LARGE_ALLOCATION_BYTES", "map_large_allocations", "release_freed_memory"]

#: Allocations from this size up get pages of their own (:func:`map_large_allocations`).
LARGE_ALLOCATION_BYTES = 4 * 2**20

#: ``M_MMAP_THRESHOLD`` of glibc's ``<malloc.h>``.
_M_MMAP_THRESHOLD = -3


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


@functools.cache
def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or None where the C library has none."""
    try:
        option = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):
        return None
    option.argtypes = [ctypes.c_int, ctypes.c_int]
    option.restype = ctypes.c_int
    function: Callable[[int, int], int] = option
    return function


@functools.cache
def map_large_allocations() -> bool:
    """Give this process's allocations of :data:`LARGE_ALLOCATION_BYTES` and more pages of their own.

    Freed, such a buffer goes back to the operating system at once instead of staying in a
    ``malloc`` heap (see the module docstring). It applies to the whole process and stays set; the
    first call sets it and later calls do nothing. A ``MALLOC_MMAP_THRESHOLD_`` set in the
    environment wins over it.

    Returns
    -------
    bool
        Whether the threshold is set as asked: False elsewhere than glibc, or where the
        environment sets it.
    """
    option = _mallopt()
    if option is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return bool(option(_M_MMAP_THRESHOLD, LARGE_ALLOCATION_BYTES))


def release_freed_memory() -> None:
    """Give memory freed by Arrow and by ``malloc`` back to the operating system.

    Call it after a step that freed large buffers, before one that allocates many; it frees nothing
    that is in use.
    """
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
