"""The change cube's owner says whether a cube is finished, and its read model refuses unfinished ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from pyproj import CRS

from pipeline.change_cube import (
    ATTR_COMPLETE,
    ATTR_FINGERPRINT,
    BlockGrid,
    ChangeCubeLayout,
    change_cube_is_complete,
    create_change_cube,
    describe_change_cube,
    finalise_change_cube,
    inspect_change_cube,
)
from pipeline.errors import PublishError


def _create(path: Path) -> None:
    create_change_cube(
        path,
        ChangeCubeLayout(BlockGrid(48, 32, 16), classes=("water", "land"), targets=("water",)),
        y=5000.0 - 10 * np.arange(48) - 5.0,
        x=400.0 + 10 * np.arange(32) + 5.0,
        crs=CRS.from_epsg(32633),
        transform=Affine(10, 0, 400.0, 0, -10, 5000.0),
        attrs={ATTR_FINGERPRINT: "f1"},
    )


def test_a_cube_is_complete_only_once_finalised(tmp_path: Path) -> None:
    path = tmp_path / "change_cube.zarr"
    assert not change_cube_is_complete(path)
    _create(path)
    state = inspect_change_cube(path)
    assert state.is_change_cube and state.fingerprint == "f1" and state.attrs is not None
    assert state.attrs[ATTR_COMPLETE] is False
    assert not change_cube_is_complete(path)
    with pytest.raises(PublishError, match="incomplete"):
        describe_change_cube(path)
    finalise_change_cube(path)
    assert change_cube_is_complete(path)
    info = describe_change_cube(path)
    assert (info.height, info.width, info.chunk) == (48, 32, 16)
    assert info.classes == ("water", "land") and info.targets == ("water",) and info.fingerprint == "f1"


def test_something_else_at_the_path_is_not_a_complete_cube(tmp_path: Path) -> None:
    (tmp_path / "change_cube.zarr").mkdir()
    (tmp_path / "change_cube.zarr" / "notes.txt").write_text("not a cube")
    assert not change_cube_is_complete(tmp_path / "change_cube.zarr")
