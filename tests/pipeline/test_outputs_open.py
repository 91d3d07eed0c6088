"""The outputs open right in plain tools: ``xr.open_zarr`` + rioxarray, with no special arguments.

A user who opens the change cube or the input cube with a plain ``xr.open_zarr(path)`` (no
``decode_coords="all"``, no ``mask_and_scale=False``) gets the job's CRS and transform from
``.rio``, the integer layers as integers with their nodata in ``.rio.nodata``, and the target
labels as strings; zarr-python does not warn that other readers may not read the labels. The
README's "Outputs" section shows how to open every output: its Python and its commands run here on
a published run.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
from affine import Affine
from engine_inputs import ORIGIN, run_small_engine, write_patch_cube
from pyproj import CRS

from pipeline.change_cube import BlockGrid, ChangeCubeLayout, create_change_cube
from pipeline.publish import PublishResult, publish
from pipeline.spec import JobSpec

REPO = Path(__file__).resolve().parents[2]
DEMO_OUTPUT = "seg2change-demo/output"

# The test helper's input cube has fixed-width epoch labels; that warning is not the change cube's.
pytestmark = pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 specification")

HEIGHT, WIDTH = 200, 180
JOB_CRS = CRS.from_epsg(32633)
INTEGER_LAYERS = {
    "change": ("uint8", 255),
    "class_before": ("uint8", 255),
    "class_after": ("uint8", 255),
    "transition": ("uint16", 65535),
    "target_change": ("uint8", 255),
}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("outputs")
    cube = write_patch_cube(tmp / "input_cube.zarr", HEIGHT, WIDTH, chunk=128, change_fraction=0.3)
    job = JobSpec.build(
        aoi={"bbox": (400_000, 4_998_000, 401_800, 5_000_000), "crs": "EPSG:32633"},
        before="2023-06-01/2023-06-30",
        after="2024-06-01/2024-06-30",
        catalog="https://stac.example.com/v1",
        collections="sentinel-2-l2a",
        grid={"crs": "EPSG:32633"},
        output=str(tmp),
    )
    result = run_small_engine(job, cube, tmp / "change_cube.zarr")
    return cube, Path(result.path)


@pytest.fixture(scope="module")
def published(outputs: tuple[Path, Path]) -> PublishResult:
    cube, change_cube = outputs
    item = "https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a/items/S2A_1"
    provenance = {
        "catalog": "https://earth-search.aws.element84.com/v1",
        "collections": ["sentinel-2-l2a"],
        "items": {"before": [{"id": "S2A_1", "collection": "sentinel-2-l2a", "href": item}], "after": []},
    }
    return publish(None, change_cube, cube, provenance, change_cube.parent, progress=False)


def readme_outputs_section() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"^## Outputs\n(.*?)^## ", text, flags=re.S | re.M)
    assert match, "README.md has no '## Outputs' section"
    return match.group(1)


def test_plain_open_zarr_gives_the_job_crs_and_transform(outputs: tuple[Path, Path]) -> None:
    cube, change_cube = outputs
    expected = Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1])
    for path in (change_cube, cube):
        ds = xr.open_zarr(path)
        assert ds.rio.crs == JOB_CRS, path
        assert "spatial_ref" in ds.coords, path
        assert ds.rio.transform() == expected, path
    layer = xr.open_zarr(change_cube)["class_before"]
    assert layer.rio.crs == JOB_CRS  # a single layer carries it too


def test_integer_layers_open_as_integers_with_their_nodata(outputs: tuple[Path, Path]) -> None:
    _, change_cube = outputs
    ds = xr.open_zarr(change_cube)
    for name, (dtype, nodata) in INTEGER_LAYERS.items():
        assert ds[name].dtype == np.dtype(dtype), name
        assert ds[name].rio.nodata == nodata, name
        assert ds[name].attrs["nodata"] == nodata, name
    # The bottom row is nodata in the input, so it is nodata in every layer, as stored.
    assert (ds["class_before"].values[-1] == 255).all()
    assert (ds["transition"].values[-1] == 65535).all()
    assert (ds["class_before"].values[:-1] < 5).all()
    assert ds["change_probability"].dtype == np.float32
    assert np.isnan(ds["change_probability"].values[-1]).all()
    assert ds["block_done"].dtype == np.uint8 and (ds["block_done"].values == 1).all()


def test_target_labels_are_variable_length_strings_without_a_zarr_warning(tmp_path: Path) -> None:
    layout = ChangeCubeLayout(
        BlockGrid(64, 64, 32), ("background", "water", "building"), ("water", "building")
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        create_change_cube(
            tmp_path / "change_cube.zarr",
            layout,
            y=ORIGIN[1] - 10 * np.arange(64) - 5.0,
            x=ORIGIN[0] + 10 * np.arange(64) + 5.0,
            crs=JOB_CRS,
            transform=Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1]),
            attrs={},
        )
    assert not [w for w in caught if "Zarr V3 specification" in str(w.message)]
    target = zarr.open_array(str(tmp_path / "change_cube.zarr"), path="target", mode="r")
    assert str(target.metadata.to_dict()["data_type"]) == "string"
    assert list(xr.open_zarr(tmp_path / "change_cube.zarr")["target"].values) == ["water", "building"]


def test_zarr_v2_cube_keeps_cf_fill_values_and_fixed_width_labels(tmp_path: Path) -> None:
    layout = ChangeCubeLayout(BlockGrid(64, 64, 32), ("background", "water"), ("water",), zarr_format=2)
    create_change_cube(
        tmp_path / "v2.zarr",
        layout,
        y=ORIGIN[1] - 10 * np.arange(64) - 5.0,
        x=ORIGIN[0] + 10 * np.arange(64) + 5.0,
        crs=JOB_CRS,
        transform=Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1]),
        attrs={},
    )
    ds = xr.open_zarr(tmp_path / "v2.zarr", mask_and_scale=False)
    assert ds.rio.crs == JOB_CRS
    assert ds["class_before"].dtype == np.uint8 and ds["class_before"].rio.nodata == 255
    assert ds["target"].dtype.kind == "U"


def test_the_readme_outputs_python_runs_on_a_published_run(published: PublishResult) -> None:
    out = published.stac_item.local_path.parent.parent
    blocks = re.findall(r"```python\n(.*?)```", readme_outputs_section(), flags=re.S)
    assert len(blocks) == 1 and f'Path("{DEMO_OUTPUT}")' in blocks[0]
    code = blocks[0].replace(f'Path("{DEMO_OUTPUT}")', f"Path({str(out)!r})")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md#outputs", "exec"), {})
    text = printed.getvalue()
    assert "EPSG:32633" in text and "uint16 65535" in text and "b'EPSG:32633'" in text
    assert "earth-search.aws.element84.com" in text


def test_the_readme_gdal_commands_show_colour_tables_categories_and_a_v2_cube(
    published: PublishResult, tmp_path: Path
) -> None:
    gdalinfo = shutil.which("gdalinfo")
    if gdalinfo is None:
        pytest.skip("the GDAL command-line tools are not installed (apt-get install gdal-bin)")
    section = readme_outputs_section()
    out = published.stac_item.local_path.parent.parent
    commands = [
        line.split(" #", 1)[0].strip()
        for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)
        for line in block.splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert commands == [f"gdalinfo {DEMO_OUTPUT}/cogs/class_after.tif"]
    text = subprocess.run(
        shlex.split(commands[0].replace(DEMO_OUTPUT, str(out))), check=True, capture_output=True, text=True
    ).stdout
    assert "Color Table" in text and "Categories:" in text and "0: background" in text
    # The Zarr v2 line, on a v2 cube.
    inline = re.search(r"`(gdalinfo 'ZARR:\"out/change_cube\.zarr\":/transition')`", section)
    assert inline is not None
    create_change_cube(
        tmp_path / "out" / "change_cube.zarr",
        ChangeCubeLayout(BlockGrid(64, 64, 32), ("background", "water"), ("water",), zarr_format=2),
        y=ORIGIN[1] - 10 * np.arange(64) - 5.0,
        x=ORIGIN[0] + 10 * np.arange(64) + 5.0,
        crs=JOB_CRS,
        transform=Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1]),
        attrs={},
    )
    text = subprocess.run(
        shlex.split(inline.group(1)), check=True, capture_output=True, text=True, cwd=tmp_path
    ).stdout
    assert 'ID["EPSG",32633]' in text and "NoData Value=65535" in text
    assert "Origin = (400000.000000000000000,5000000.000000000000000)" in text
