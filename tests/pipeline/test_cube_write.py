"""Writing cubes never replaces a good output by a broken one, and refuses to overwrite by default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from pipeline.cube import open_cube, write_cube
from pipeline.errors import OutputExistsError


def _cube(value: float) -> xr.Dataset:
    data = da.full((2, 3, 64, 64), value, dtype="float32", chunks=(1, 3, 32, 32))
    ds = xr.Dataset(
        {"reflectance": (("epoch", "band", "y", "x"), data)},
        coords={"y": 5_000_000.0 - 10 * np.arange(64) - 5, "x": 400_000.0 + 10 * np.arange(64) + 5},
    )
    return ds.rio.write_crs("EPSG:32633")


def test_existing_output_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "input_cube.zarr"
    write_cube(_cube(1.0), path, progress=False)
    with pytest.raises(OutputExistsError, match="pass --overwrite to replace it"):
        write_cube(_cube(2.0), path, progress=False)
    assert float(open_cube(path)["reflectance"].max()) == 1.0
    write_cube(_cube(2.0), path, overwrite=True, progress=False)
    assert float(open_cube(path)["reflectance"].min()) == 2.0


def test_failed_write_leaves_the_old_cube_and_no_debris(tmp_path: Path) -> None:
    path = tmp_path / "input_cube.zarr"
    write_cube(_cube(1.0), path, progress=False)

    def explode(block: np.ndarray) -> np.ndarray:
        raise RuntimeError("reader died")

    broken = _cube(3.0)
    broken["reflectance"] = broken["reflectance"].copy(
        data=broken["reflectance"].data.map_blocks(explode, dtype="float32", meta=np.array((), "float32"))
    )
    with pytest.raises(RuntimeError, match="reader died"):
        write_cube(broken, path, overwrite=True, progress=False)
    assert float(open_cube(path)["reflectance"].max()) == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input_cube.zarr"]


def _store_files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_blocks_written_two_at_once_are_the_bytes_written_one_by_one(tmp_path: Path) -> None:
    data = da.arange(2 * 3 * 64 * 64, dtype="float32").reshape(2, 3, 64, 64).rechunk((1, 3, 32, 32))
    cube = _cube(0.0)
    cube["reflectance"] = cube["reflectance"].copy(data=data)
    one = write_cube(cube, tmp_path / "one.zarr", progress=False, blocks_at_once=1)
    two = write_cube(cube, tmp_path / "two.zarr", progress=False, blocks_at_once=2, resume_key="k" * 16)
    assert _store_files(one.local_path) == _store_files(two.local_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.zarr", "two.zarr"]


def test_a_block_failing_beside_others_stops_the_write_and_keeps_the_old_cube(tmp_path: Path) -> None:
    path = tmp_path / "input_cube.zarr"
    write_cube(_cube(1.0), path, progress=False)

    def explode_in_the_last_block(block: np.ndarray, block_info: Any = None) -> np.ndarray:
        if block_info[0]["chunk-location"][2:] == (1, 1):
            raise RuntimeError("reader died")
        return block

    broken = _cube(3.0)
    broken["reflectance"] = broken["reflectance"].copy(
        data=broken["reflectance"].data.map_blocks(explode_in_the_last_block, dtype="float32")
    )
    with pytest.raises(RuntimeError, match="reader died"):
        write_cube(broken, path, overwrite=True, progress=False, blocks_at_once=2)
    assert float(open_cube(path)["reflectance"].max()) == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input_cube.zarr"]
