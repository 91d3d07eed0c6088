"""The sensor table: quality masks by value and by bit, presets, aliases and the registries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import rasterio
import shapely.geometry
import xarray as xr
from rasterio.transform import from_origin

from pipeline.bands import resolve_asset_key
from pipeline.cube import open_cube, prepare_cube
from pipeline.discover import Discovery
from pipeline.errors import JobSpecError
from pipeline.sensors import (
    LANDSAT_QA_PIXEL_BITS,
    QualitySpec,
    Sensor,
    available_sensors,
    get_sensor,
    quality_preset,
    register_quality_preset,
    register_sensor,
    sensor_aliases,
)
from pipeline.spec import JobSpec

#: Landsat Collection 2 QA_PIXEL values as the USGS lists them, and whether each is usable.
QA_PIXEL = {
    21824: True,  # clear land, low confidences
    21952: True,  # clear water
    30048: True,  # snow, clear of clouds
    21826: True,  # dilated cloud only: not masked by the preset
    1: False,  # fill
    22280: False,  # cloud, high confidence
    23888: False,  # cloud shadow
    54596: False,  # high-confidence cirrus
    55052: False,  # cloud and cirrus
}


def qa_pixel(*, fill: bool = False, cirrus: bool = False, cloud: bool = False, shadow: bool = False) -> int:
    """A QA_PIXEL value built from its flags (clear bit set when nothing else is)."""
    flags = {"fill": fill, "cirrus": cirrus, "cloud": cloud, "cloud_shadow": shadow}
    value = sum(1 << LANDSAT_QA_PIXEL_BITS[name] for name, on in flags.items() if on)
    return value or 1 << LANDSAT_QA_PIXEL_BITS["clear"]


def test_landsat_bit_mask_flags_fill_cloud_shadow_and_cirrus_on_synthetic_values() -> None:
    preset = quality_preset("landsat-qa-pixel")
    assert (preset.asset, preset.invalid_values, sorted(preset.invalid_bits)) == (
        "qa_pixel",
        (),
        [0, 2, 3, 4],
    )
    values = np.array(list(QA_PIXEL), dtype=np.uint16)
    np.testing.assert_array_equal(preset.invalid(values), [not usable for usable in QA_PIXEL.values()])

    rng = np.random.default_rng(0)
    flags = rng.random((4, 50, 60)) < 0.2
    built = np.vectorize(lambda f, c, d, s: qa_pixel(fill=f, cirrus=c, cloud=d, shadow=s))(*flags)
    noise = rng.integers(0, 4, built.shape) << 8  # confidence bits 8..15 never mask
    quality = (built | noise).astype(np.float32)
    quality[0, :3] = np.nan  # no quality value: masked as nodata
    expected = flags.any(axis=0)
    expected[0, :3] = True
    np.testing.assert_array_equal(preset.invalid(quality), expected)


def test_masks_agree_on_numpy_and_lazy_xarray() -> None:
    values = np.array([[21824, 22280, np.nan], [1, 23888, 21952]], dtype=np.float32)
    lazy = xr.DataArray(da.from_array(values, chunks=1), dims=("y", "x"))
    for name in ("landsat-qa-pixel", "s2-scl", "synthetic", "none"):
        preset = quality_preset(name)
        mask = preset.invalid(lazy)
        assert isinstance(mask, xr.DataArray) and isinstance(mask.data, da.Array)
        np.testing.assert_array_equal(mask.values, preset.invalid(values))


def test_value_presets_mask_what_the_value_lists_say() -> None:
    scl = np.arange(12, dtype=np.float32)
    expected = np.isin(scl, [0, 1, 3, 8, 9, 10])
    np.testing.assert_array_equal(QualitySpec.model_validate("s2-scl").invalid(scl), expected)
    both = QualitySpec(asset="qa", invalid_values=(255,), invalid_bits=(0,))
    np.testing.assert_array_equal(
        both.invalid(np.array([0, 1, 2, 255, 254])), [False, True, False, True, False]
    )


def test_job_quality_presets_and_bad_bits() -> None:
    fields = {
        "aoi": {"bbox": (10.0, 45.0, 10.1, 45.1)},
        "before": "2023-06-01/2023-06-30",
        "after": "2024-06-01/2024-06-30",
        "catalog": "https://stac.example.com/v1",
        "collections": "landsat-c2-l2",
        "output": "out",
    }
    job = JobSpec.build(**fields, quality="landsat-qa-pixel")
    assert job.quality == quality_preset("landsat-qa-pixel")
    assert JobSpec.build(**fields).quality == QualitySpec(asset="qa", invalid_values=(1, 2, 255))
    with pytest.raises(
        JobSpecError, match="quality preset 'clouds' is unknown; use one of .*landsat-qa-pixel"
    ):
        JobSpec.build(**fields, quality="clouds")
    with pytest.raises(JobSpecError, match=r"invalid_bits \[40\] must be bit positions 0..31"):
        JobSpec.build(**fields, quality={"asset": "qa_pixel", "invalid_bits": [3, 40]})


def test_sensor_table_resolves_asset_keys_and_holds_scaling() -> None:
    landsat = {"SR_B2": {}, "SR_B5": {}, "qa_pixel": {}}
    assert resolve_asset_key(landsat, "blue") == "SR_B2"
    assert resolve_asset_key(landsat, "nir") == "SR_B5"
    assert resolve_asset_key({"B02": {}, "blue": {}}, "blue") == "blue"  # the key itself first
    assert get_sensor("landsat-c2-l2").scaling["red"] == (2.75e-5, -0.2)
    assert get_sensor("sentinel-2-l2a").quality == "s2-scl"
    assert available_sensors()[:2] == ("sentinel-2-l2a", "landsat-c2-l2")


def test_registering_a_sensor_extends_the_aliases_and_refuses_taken_names() -> None:
    register_quality_preset("test-qa", QualitySpec(asset="QA", invalid_values=(), invalid_bits=(1,)))
    sensor = register_sensor(
        Sensor("test-sensor", {"red": ("RED_DN",), "deep-blue": ("DB",)}, quality="test-qa")
    )
    assert sensor_aliases()["red"][-1] == "RED_DN"
    assert resolve_asset_key({"RED_DN": {}}, "red") == "RED_DN"
    assert get_sensor("test-sensor") is sensor
    register_sensor(Sensor("test-sensor", {"red": ("RED_DN",), "deep-blue": ("DB",)}, quality="test-qa"))
    with pytest.raises(JobSpecError, match="sensor named 'test-sensor' is already registered"):
        register_sensor(Sensor("test-sensor", {"red": ("R",)}))
    with pytest.raises(JobSpecError, match="quality preset named 's2-scl' is already registered"):
        register_quality_preset("s2-scl", QualitySpec(asset="scl", invalid_values=(9,)))
    with pytest.raises(JobSpecError, match="names quality preset 'clouds', which is unknown"):
        Sensor("other", {}, quality="clouds")
    with pytest.raises(JobSpecError, match="unknown sensor 'modis'; known sensors: sentinel-2-l2a, "):
        get_sensor("modis")


def _write_band(path: Path, values: np.ndarray) -> dict[str, str]:
    profile = {
        "driver": "GTiff",
        "width": values.shape[1],
        "height": values.shape[0],
        "count": 1,
        "dtype": values.dtype.name,
        "crs": "EPSG:32633",
        "transform": from_origin(*_ORIGIN, 10.0, 10.0),
    }
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(values, 1)
    return {"href": str(path), "type": "image/tiff; application=geotiff"}


def _landsat_item(folder: Path, item_id: str, day: str, reflectance: float, qa: np.ndarray) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    size = qa.shape[0]
    xmin, ymax = _ORIGIN
    bbox = [xmin, ymax - size * 10.0, xmin + size * 10.0, ymax]
    assets = {
        band: _write_band(folder / f"{item_id}_{band}.tif", np.full(qa.shape, reflectance, dtype="float32"))
        for band in ("red", "green", "blue")
    }
    assets["qa_pixel"] = _write_band(folder / f"{item_id}_qa_pixel.tif", qa.astype("uint16"))
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "bbox": bbox,
        "geometry": shapely.geometry.mapping(shapely.geometry.box(*bbox)),
        "properties": {
            "datetime": f"{day}T10:00:00Z",
            "proj:epsg": 32633,
            "proj:shape": list(qa.shape),
            "proj:transform": list(from_origin(*_ORIGIN, 10.0, 10.0))[:6],
        },
        "assets": assets,
        "links": [],
    }


#: Upper-left corner of the hand-made Landsat scenes (EPSG:32633).
_ORIGIN = (500_000.0, 4_100_640.0)


def test_landsat_qa_pixel_bits_mask_pixels_of_the_prepared_cube(tmp_path: Path) -> None:
    """A quality band whose flags are bits (Landsat QA_PIXEL) masks the flagged pixels before compositing."""
    size = 64
    clear, cloud, shadow = qa_pixel(), 22280, 23888  # 22280 and 23888 set other bits than the flag too
    first = np.full((size, size), clear)
    first[:, : size // 2] = cloud  # left half clouded in the first scene
    second = np.full((size, size), 21826)  # dilated cloud only: usable
    second[: size // 4] = shadow  # top quarter shadowed in the second scene
    after = np.full((size, size), clear)
    after[-1, -1] = qa_pixel(fill=True)
    items = {
        "before": [
            _landsat_item(tmp_path / "scenes", "first", "2020-01-05", 0.1, first),
            _landsat_item(tmp_path / "scenes", "second", "2020-01-20", 0.3, second),
        ],
        "after": [_landsat_item(tmp_path / "scenes", "later", "2020-06-10", 0.2, after)],
    }
    catalog = tmp_path / "items.json"
    catalog.write_text(
        json.dumps({"type": "FeatureCollection", "features": items["before"] + items["after"]})
    )
    xmin, ymax = _ORIGIN
    job = JobSpec.build(
        aoi={"bbox": (xmin, ymax - size * 10.0, xmin + size * 10.0, ymax), "crs": "EPSG:32633"},
        before="2020-01-01/2020-01-31",
        after="2020-06-01/2020-06-30",
        catalog=str(catalog),
        collections=["landsat"],
        bands=["red", "green", "blue"],
        quality="landsat-qa-pixel",
        grid={"crs": "EPSG:32633", "resolution": 10.0},
        cloud_limit=100,
        block_size=64,
        output=str(tmp_path / "out"),
    )
    discovery = Discovery(
        items=items, filter_mode="client", catalog=str(catalog), cloud_limit=100, collections=("landsat",)
    )
    cube = open_cube(prepare_cube(job, discovery, progress=False, scheduler="synchronous").path)
    red = cube["reflectance"].sel(band="red").values
    count = cube["clear_count"].values
    assert red.shape == (2, size, size)

    top, left = slice(None, size // 4), slice(None, size // 2)
    expected = np.full((size, size), np.float32(0.2))  # median of 0.1 and 0.3 where both are clear
    expected[:, left] = np.float32(0.3)  # first scene clouded: the second alone
    expected[top] = np.float32(0.1)  # second scene shadowed: the first alone
    expected[top, left] = np.nan  # both masked
    np.testing.assert_allclose(red[0], expected, rtol=1e-6)
    expected_count = np.full((size, size), 2)
    expected_count[:, left] = 1
    expected_count[top] = 1
    expected_count[top, left] = 0
    np.testing.assert_array_equal(count[0], expected_count)

    assert np.isnan(red[1, -1, -1]) and count[1, -1, -1] == 0  # fill
    assert np.isfinite(red[1, :-1]).all() and (count[1, :-1] == 1).all()
