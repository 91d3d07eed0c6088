"""Input-cube blocks sliced from each window's stack over the whole grid have the pixels of blocks
stacked over their own bounds, including blocks that an item misses or that no item covers.

A 256 px generated scene on a 384 px grid (128 px blocks): the grid runs 64 px past the scene to
the west and the east and 128 px to the south, so the blocks checked straddle the scene's west
edge, lie inside it, straddle its east edge, or lie outside every item.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import xarray as xr

import pipeline.cube_assembly as cube_assembly
from pipeline.cube_assembly import assemble_region, region_bounds, whole_grid_stacks
from pipeline.cube_schema import CLEAR_COUNT, REFLECTANCE
from pipeline.demo import demo_job_fields
from pipeline.discover import Discovery, discover
from pipeline.spec import JobSpec
from pipeline.synthetic import SceneSpec, generate_scene

SCENE, GRID, BLOCK = 256, 384, 128


@pytest.fixture(scope="module")
def job_and_items(tmp_path_factory: pytest.TempPathFactory) -> tuple[JobSpec, Discovery]:
    root = tmp_path_factory.mktemp("whole-grid")
    scene = generate_scene(SceneSpec(size=SCENE, seed=7, block_size=256), root / "scene")
    fields = demo_job_fields(scene, str(scene.items_path), root / "out")
    xmin, ymin, xmax, ymax = scene.bbox_utm
    res = scene.spec.resolution
    fields["aoi"] = {**fields["aoi"], "bbox": [xmin - 64 * res, ymin - 128 * res, xmax + 64 * res, ymax]}
    fields["block_size"] = BLOCK
    job = JobSpec.build(**fields)
    return job, discover(job)


#: The blocks checked (row, column): straddling the scene's west edge, inside it, straddling its
#: east edge, south of it.
_CHECKED = ((0, 0), (1, 1), (0, 2), (2, 2))


def _blocks(job: JobSpec) -> list[tuple[slice, slice]]:
    return [(slice(r * BLOCK, (r + 1) * BLOCK), slice(c * BLOCK, (c + 1) * BLOCK)) for r, c in _CHECKED]


def _pixels(job: JobSpec, found: Discovery, rows: slice, cols: slice) -> xr.Dataset:
    block = assemble_region(job, found, region_bounds(job, rows, cols))
    return block[[REFLECTANCE, CLEAR_COUNT]].compute()


def test_blocks_sliced_from_the_whole_grid_equal_blocks_stacked_on_their_own(
    job_and_items: tuple[JobSpec, Discovery], monkeypatch: pytest.MonkeyPatch
) -> None:
    job, found = job_and_items
    whole = assemble_region(job, found, job.target_bounds())
    assert (whole.sizes["y"], whole.sizes["x"]) == (GRID, GRID)
    stacked: list[tuple[float, ...]] = []
    stack = cube_assembly.stackstac.stack

    def counted(items: Any, **kwargs: Any) -> Any:
        stacked.append(tuple(kwargs["bounds"]))
        return stack(items, **kwargs)

    monkeypatch.setattr(cube_assembly.stackstac, "stack", counted)
    own = [_pixels(job, found, rows, cols) for rows, cols in _blocks(job)]
    assert len(stacked) == 2 * len(_CHECKED)  # each window, each block
    stacked.clear()
    with whole_grid_stacks():
        sliced = [_pixels(job, found, rows, cols) for rows, cols in _blocks(job)]
    assert stacked == [tuple(job.target_bounds())] * 2  # each window once, over the whole grid
    for a, b in zip(own, sliced, strict=True):
        for name in (REFLECTANCE, CLEAR_COUNT):
            assert a[name].dtype == b[name].dtype
            assert a[name].values.tobytes() == b[name].values.tobytes()
    nodata = [np.isnan(b[REFLECTANCE].values).all(axis=(0, 1, 2)) for b in sliced]  # per column
    assert nodata[0][:64].all() and not nodata[0][64:].any()  # west of the scene, then in it
    assert not nodata[1].any()
    assert not nodata[2][:64].any() and nodata[2][64:].all()  # in the scene, then east of it
    assert nodata[3].all() and int(sliced[3][CLEAR_COUNT].max()) == 0


def test_bounds_off_the_grid_or_past_it_are_stacked_on_their_own(
    job_and_items: tuple[JobSpec, Discovery],
) -> None:
    job, found = job_and_items
    xmin, ymin, xmax, ymax = region_bounds(job, slice(0, BLOCK), slice(0, BLOCK))
    half = job.grid.resolution / 2
    shifted = (xmin + half, ymin, xmax + half, ymax)
    beyond = region_bounds(job, slice(GRID - BLOCK, GRID + BLOCK), slice(0, BLOCK))  # south of the grid
    with whole_grid_stacks():
        assert cube_assembly._region_of(job, shifted) is None
        block = assemble_region(job, found, shifted)
        outside = assemble_region(job, found, beyond)
    assert block.sizes["x"] == BLOCK and float(block["x"][0]) == pytest.approx(xmin + 2 * half)
    assert outside.sizes["y"] == 2 * BLOCK
