"""Reading the input cube through the decoded-chunk cache: same pixels, bounded memory, per run."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from engine_inputs import patch_reflectance, write_reflectance_cube

from pipeline.input_reader import ChunkCache, read_window
from pipeline.tiling import Window


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    refl = patch_reflectance(300, 260, seed=4, change_fraction=0.2, gaps=((0, slice(10, 40), slice(5, 50)),))
    path = write_reflectance_cube(tmp_path_factory.mktemp("reader") / "cube.zarr", refl, chunk=128)
    return path, refl


@pytest.mark.parametrize(
    "window",
    [Window(0, 300, 0, 260), Window(100, 230, 120, 140), Window(250, 300, 250, 260), Window(0, 1, 0, 1)],
)
def test_cached_reads_equal_direct_reads(cube: tuple[Path, np.ndarray], window: Window) -> None:
    path, refl = cube
    cache = ChunkCache()
    rows, cols = window.slices
    expected = refl[:, :, rows, cols]
    direct = read_window(str(path), window)
    first = read_window(str(path), window, run="a", cache=cache)
    again = read_window(str(path), window, run="a", cache=cache)
    for got in (direct, first, again):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)
    assert cache.hits > 0


def test_runs_never_share_chunks_and_a_finished_run_is_forgotten(cube: tuple[Path, np.ndarray]) -> None:
    path, _ = cube
    cache = ChunkCache()
    window = Window(0, 128, 0, 128)  # one chunk
    read_window(str(path), window, run="a", cache=cache)
    read_window(str(path), window, run="b", cache=cache)
    assert (cache.hits, cache.misses) == (0, 2)
    held = cache.nbytes
    cache.forget("a")
    assert cache.nbytes == held // 2
    read_window(str(path), window, run="b", cache=cache)
    assert cache.hits == 1


def test_the_cache_stays_within_its_budget(cube: tuple[Path, np.ndarray]) -> None:
    path, refl = cube
    one_chunk = 2 * refl.shape[1] * 128 * 128 * 4
    cache = ChunkCache(max_bytes=2 * one_chunk)
    np.testing.assert_array_equal(read_window(str(path), Window(0, 300, 0, 260), run="a", cache=cache), refl)
    assert cache.nbytes <= 2 * one_chunk
    tiny = ChunkCache(max_bytes=one_chunk - 1)
    read_window(str(path), Window(0, 10, 0, 10), run="a", cache=tiny)
    assert tiny.nbytes == 0


def test_concurrent_misses_load_a_chunk_once() -> None:
    cache = ChunkCache()
    loads: list[int] = []

    def load() -> np.ndarray:
        loads.append(1)
        time.sleep(0.05)
        return np.ones(4, dtype=np.float32)

    results: list[np.ndarray] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_load(("r", 0), load))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1 and len(results) == 4
    assert all(r is results[0] for r in results)


def test_a_failed_load_leaves_the_key_loadable() -> None:
    cache = ChunkCache()

    def fail() -> np.ndarray:
        raise OSError("unreachable")

    with pytest.raises(OSError, match="unreachable"):
        cache.get_or_load(("r", 0), fail)
    assert cache.get_or_load(("r", 0), lambda: np.zeros(2, dtype=np.float32)).shape == (2,)


def test_a_read_decodes_its_other_chunks_before_waiting_for_one_in_flight(
    cube: tuple[Path, np.ndarray],
) -> None:
    """The first groups of a run start together on shared chunks: none waits while it has its own to decode."""
    path, refl = cube
    cache = ChunkCache()
    in_flight = (0, 0)
    release = threading.Event()
    chunk = Window(0, 128, 0, 128)

    def slow_first_chunk() -> np.ndarray:
        assert release.wait(10)
        return read_window(str(path), chunk)

    holder = threading.Thread(
        target=cache.get_or_load, args=(("run", str(path), *in_flight), slow_first_chunk)
    )
    holder.start()
    while cache.misses == 0:  # the holder is now loading chunk (0, 0)
        time.sleep(0.001)
    window = Window(0, 200, 0, 200)  # chunks (0, 0), (0, 1), (1, 0), (1, 1)
    got: list[np.ndarray] = []
    reader = threading.Thread(
        target=lambda: got.append(read_window(str(path), window, run="run", cache=cache))
    )
    reader.start()
    deadline = time.monotonic() + 10
    while cache.misses < 4 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert cache.misses == 4 and not got  # its three own chunks decoded, still waiting for (0, 0)
    release.set()
    reader.join(10)
    holder.join(10)
    np.testing.assert_array_equal(got[0], refl[:, :, :200, :200])
    assert cache.misses == 4  # chunk (0, 0) was decoded once, by the holder
