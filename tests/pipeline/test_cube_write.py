"""Writing cubes never replaces a good output by a broken one, and refuses to overwrite by default."""

from __future__ import annotations

from pathlib import Path

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
