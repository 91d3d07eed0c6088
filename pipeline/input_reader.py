"""Windows of the input cube's reflectance, read through a per-process cache of decoded chunks.

A tile-group task reads the union of its tiles, which reaches over chunk boundaries and overlaps
the windows of the neighbouring groups by the tile overlap: with 504 px tiles on 512 px chunks every
chunk is decoded by about four groups (five on the demo scene). Decoding float32 reflectance is
the cost (zstd at about 0.5 GB/s here), and zarr keeps no decoded chunks (its cache stores hold
encoded bytes), so this module does, written by hand for that reason:

- a :class:`ChunkCache` holds the decoded chunk regions ``(epochs, bands, rows, cols)`` that the
  last reads touched, least recently used first out, within a byte budget
  (:data:`DEFAULT_CACHE_BYTES`); the plan's order (block by block, row by row) makes the next
  groups need the chunks the last ones read;
- entries are keyed by the run that reads them (:func:`read_window`'s ``run``), never by path
  alone, so a cube rewritten at the same path between two runs is never served from the cache.

A chunk is decoded by one thread at a time: a thread that misses a chunk another thread is
decoding first decodes the other chunks it needs, then waits for that one. :func:`forget_run`
drops a finished run's chunks.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from pipeline.cube_schema import REFLECTANCE
from pipeline.storage import Location
from pipeline.tiling import Window

__all__ = ["DEFAULT_CACHE_BYTES", "ChunkCache", "forget_run", "read_window"]

#: Decoded chunks one process keeps: 5 chunks of 2 dates x 6 bands x 512 x 512 float32, for the
#: reuse between neighbouring groups. On a 2048 px scene it decodes each chunk 1.3-1.6 times (once
#: with 128 MiB, 2-2.7 times with 32 MiB); more would cost worker memory that grows with the area
#: (bench/engine_memory.py).
DEFAULT_CACHE_BYTES = 64 * 2**20

F32 = NDArray[np.float32]


class ChunkCache:
    """Decoded chunk regions, least recently used out first, within ``max_bytes``.

    Parameters
    ----------
    max_bytes
        Budget of the cached arrays; a chunk larger than the budget is never kept.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[Any, ...], F32] = OrderedDict()
        self._loading: dict[tuple[Any, ...], threading.Lock] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_or_load(self, key: tuple[Any, ...], load: Callable[[], F32]) -> F32:
        """The array cached under ``key``, else ``load()``'s, kept (one thread loads a key at a time)."""
        while True:
            value = self.get_unless_loading(key, load)
            if value is not None:
                return value
            with self._loading_lock(key):  # another thread is loading it: wait, then look again
                pass

    def _loading_lock(self, key: tuple[Any, ...]) -> threading.Lock | contextlib.nullcontext[None]:
        with self._lock:
            return self._loading.get(key) or contextlib.nullcontext()

    def get_unless_loading(self, key: tuple[Any, ...], load: Callable[[], F32]) -> F32 | None:
        """Like :meth:`get_or_load`, but None at once when another thread is loading ``key``."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return value
            if key in self._loading:
                return None
            loading = self._loading[key] = threading.Lock()
            loading.acquire()
            self.misses += 1
        try:
            value = load()
            self._put(key, value)
            return value
        finally:
            with self._lock:
                del self._loading[key]
            loading.release()

    def _put(self, key: tuple[Any, ...], value: F32) -> None:
        if value.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.nbytes

    def forget(self, run: str) -> None:
        """Drop the entries of ``run`` (keys starting with it)."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == run]:
                self._bytes -= self._entries.pop(key).nbytes

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return self._bytes


#: The cache of this process (each Dask worker process has its own).
CACHE = ChunkCache()


def _reflectance(path: str) -> zarr.Array[Any]:
    return zarr.open_array(Location(path).zarr_store(read_only=True), path=REFLECTANCE, mode="r")


def _decode(reflectance: zarr.Array[Any], window: Window) -> F32:
    rows, cols = window.slices
    return np.asarray(reflectance[:, :, rows, cols], dtype=np.float32)


def read_window(path: str, window: Window, *, run: str | None = None, cache: ChunkCache = CACHE) -> F32:
    """The ``(epochs, bands, rows, cols)`` float32 reflectance of ``window``.

    Parameters
    ----------
    path
        The input cube (local path or fsspec URL).
    window
        Pixel window to read, inside the cube.
    run
        Identifier of the run reading (unique per run): the decoded chunks go through ``cache``
        under it. None reads directly, without the cache.
    cache
        The cache to use (default: this process's).
    """
    reflectance = _reflectance(path)
    if run is None:
        return _decode(reflectance, window)
    chunk_rows, chunk_cols = reflectance.chunks[-2:]
    height, width = reflectance.shape[-2:]
    out = np.empty((*reflectance.shape[:2], window.height, window.width), dtype=np.float32)

    def place(chunk: Window, decoded: F32) -> None:
        part = chunk.intersection(window)
        assert part is not None
        out[(slice(None), slice(None), *part.relative_to(window))] = decoded[
            (slice(None), slice(None), *part.relative_to(chunk))
        ]

    # Chunks another thread is decoding come last: the first groups of a run start together and
    # share chunks, and waiting for those first would leave this thread's own chunks for later.
    others: list[tuple[Window, tuple[Any, ...]]] = []
    for chunk_row in range(window.y0 // chunk_rows, (window.y1 - 1) // chunk_rows + 1):
        for chunk_col in range(window.x0 // chunk_cols, (window.x1 - 1) // chunk_cols + 1):
            chunk = Window(
                chunk_row * chunk_rows,
                min((chunk_row + 1) * chunk_rows, height),
                chunk_col * chunk_cols,
                min((chunk_col + 1) * chunk_cols, width),
            )
            key = (run, path, chunk_row, chunk_col)
            decoded = cache.get_unless_loading(key, partial(_decode, reflectance, chunk))
            if decoded is None:
                others.append((chunk, key))
            else:
                place(chunk, decoded)
    for chunk, key in others:
        place(chunk, cache.get_or_load(key, partial(_decode, reflectance, chunk)))
    return out


def forget_run(run: str) -> None:
    """Drop the chunks a finished run cached in this process (run on every worker at the end)."""
    CACHE.forget(run)
