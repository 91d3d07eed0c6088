"""OSCD (Sentinel-2) in its native layout: band files on three grids, 1/2 change maps, detection."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from pipeline.bands import COMMON_NAMES, SENSOR_ALIASES
from seg2change_core.datasets import (
    OSCD_BANDS,
    S2_BAND_IDS,
    S2_RESOLUTION,
    ChangeDetectionDataset,
    LabelEncoding,
    OSCDCity,
    bands_for_model,
    dataset_kind,
    read_s2_bands,
    resolve_s2_band,
    scan_datasets,
    scan_oscd,
    select_bands,
)
from seg2change_core.errors import DatasetError

GRID = 13  # 10 m pixels per side: 130 m, not a multiple of 20 m or 60 m


def _write_tif(path: Path, data: np.ndarray, resolution: float | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": data.dtype.name,
    }
    if resolution is not None:
        profile.update(crs="EPSG:32631", transform=from_origin(500000, 4000000, resolution, resolution))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data, 1)


def make_city(root: Path, city: str, *, label_values: tuple[int, int] = (1, 2)) -> Path:
    """A tiny OSCD city: each band's value is 1000 * band number + 10 * native column."""
    folder = root / city
    for date in ("imgs_1", "imgs_2"):
        for number, name in enumerate(OSCD_BANDS, start=1):
            res = S2_RESOLUTION[name]
            side = -(-GRID * 10 // res)  # native grid covering the 10 m extent
            cols = np.arange(side, dtype=np.uint16)[None].repeat(side, 0)
            data = (1000 * number + 10 * cols + (date == "imgs_2")).astype(np.uint16)
            _write_tif(folder / date / f"S2A_TILE_{S2_BAND_IDS[name]}.tif", data, float(res))
    label = np.full((GRID, GRID), label_values[0], np.uint8)
    label[:3, :4] = label_values[1]
    _write_tif(folder / "cm" / f"{city}-cm.tif", label, None)
    (folder / "dates.txt").write_text("date_1: 20160101\ndate_2: 20170101\n")
    return folder


def test_band_names_are_the_projects_common_names() -> None:
    assert set(OSCD_BANDS) <= set(COMMON_NAMES)
    assert [n for n in COMMON_NAMES if n in OSCD_BANDS] == list(OSCD_BANDS)  # spectral order
    for name, band_id in S2_BAND_IDS.items():
        assert band_id in SENSOR_ALIASES[name]
    assert resolve_s2_band("B8A") == "nir08" and resolve_s2_band("b02") == "blue"
    assert resolve_s2_band("rededge1") == "rededge071" and resolve_s2_band("SWIR2") == "swir22"
    for wrong in ("thermal", "b9"):  # "b9" would be B09 to some, the 9th channel (B8A) to others
        with pytest.raises(DatasetError, match="not a Sentinel-2 band"):
            resolve_s2_band(wrong)


def test_bands_are_resampled_onto_the_10m_grid_where_they_lie(tmp_path: Path) -> None:
    folder = make_city(tmp_path / "oscd", "town")
    nearest = read_s2_bands(folder / "imgs_1", resampling="nearest")
    assert nearest.shape == (13, GRID, GRID) and nearest.dtype == np.uint16
    centres = 5 + 10 * np.arange(GRID)  # 10 m pixel centres in metres from the west edge
    for index, name in enumerate(OSCD_BANDS):
        res = S2_RESOLUTION[name]
        expected = 1000 * (index + 1) + 10 * (centres // res)
        assert np.array_equal(nearest[index, 0], expected), name
    bilinear = read_s2_bands(folder / "imgs_1")
    assert np.array_equal(bilinear[OSCD_BANDS.index("blue")], nearest[OSCD_BANDS.index("blue")])
    swir = bilinear[OSCD_BANDS.index("swir16"), 0].astype(float)
    assert np.all(np.diff(swir) >= 0) and swir[-1] > swir[0]  # interpolated, still ordered
    chosen = read_s2_bands(folder / "imgs_1", ["red", "B02", "nir08"], resampling="nearest")
    assert np.array_equal(chosen, nearest[[3, 1, 8]])


def test_synthetic_city_scans_and_loads(tmp_path: Path) -> None:
    root = tmp_path / "oscd_s2"
    make_city(root, "town")
    make_city(root, "village")
    assert dataset_kind(root) == "oscd" and dataset_kind(root / "town") == "oscd_city"
    cities = scan_oscd(root)
    assert [c.key for c in cities] == ["oscd_s2/town", "oscd_s2/village"]
    assert cities[0].source_key == "oscd_s2/town" and cities[0].dates == ("20160101", "20170101")
    assert cities[0].label_encoding == LabelEncoding((1,), (2,))
    pair = cities[0].load()
    assert pair.before.shape == (13, GRID, GRID) and pair.after.dtype == np.uint16
    data = ChangeDetectionDataset(cities)
    assert int((data[0]["target"] == 1).sum()) == 12 and int((data[0]["target"] == 0).sum()) == GRID**2 - 12
    single = scan_oscd(root / "village")
    assert [c.key for c in single] == ["oscd_s2/village"]
    rgb = select_bands(cities, ["red", "green", "blue"])
    assert rgb[0].load().before.shape == (3, GRID, GRID)
    assert isinstance(rgb[0], OSCDCity) and rgb[0].band_names == ("red", "green", "blue")


def test_oscd_errors_name_the_fix(tmp_path: Path) -> None:
    folder = make_city(tmp_path / "oscd", "town")
    (folder / "imgs_2" / "S2A_TILE_B8A.tif").unlink()
    with pytest.raises(DatasetError, match=r"no file for band B8A \(nir08\)"):
        scan_oscd(folder)[0].load()
    (folder / "cm" / "town-cm.tif").unlink()
    with pytest.raises(DatasetError, match="has no change map"):
        scan_oscd(folder)
    with pytest.raises(DatasetError, match="not a change dataset"):
        dataset_kind(tmp_path)
    with pytest.raises(DatasetError, match="not a Sentinel-2 band"):
        select_bands(scan_datasets([make_city(tmp_path / "o2", "c")]), ["thermal"])


def test_model_bands_by_name_for_oscd_and_by_position_for_rgb(tmp_path: Path) -> None:
    cities = scan_oscd(make_city(tmp_path / "oscd_s2", "town"))
    picked = bands_for_model(cities, ("nir", "red"))
    assert picked[0].load().before.shape[0] == 2
    with pytest.raises(DatasetError, match="the model expects the bands x, y"):
        bands_for_model(cities, ("x", "y"))
    with pytest.raises(DatasetError, match="expects 3 bands"):
        bands_for_model(cities, ("x", "y", "z"), ["red", "green"])
    assert len(bands_for_model(cities, ("x", "y"), ["red", "green"])) == 1


@pytest.mark.shared_data
def test_real_oscd_cities(shared_data: Path) -> None:
    root = shared_data / "change_detection" / "oscd_s2"
    with (root / "cities.csv").open() as handle:
        table = {row["city"]: row for row in csv.DictReader(handle)}
    cities = scan_datasets([root])
    assert sorted(c.key for c in cities) == sorted(f"oscd_s2/{c}" for c in table)
    bercy = next(c for c in cities if c.key == "oscd_s2/bercy")
    assert isinstance(bercy, OSCDCity) and bercy.label.name == "bercy-cm.tif"
    assert bercy.label_encoding == LabelEncoding((1,), (2,))
    data = ChangeDetectionDataset(cities)
    for index, city in enumerate(cities):
        pair = data.pair(index)
        row = table[city.key.split("/")[1]]
        assert pair.before.shape == (13, int(row["height"]), int(row["width"]))
        assert pair.before.dtype == np.uint16
        target = data[index]["target"].numpy()
        assert (target == 1).mean() == pytest.approx(float(row["changed_fraction"]), abs=5e-6)
    # 20 m and 60 m bands: resampled to the 10 m grid, they keep their native means and agree
    # with their native grids when aggregated back (bercy's 20 m grid is exactly half the 10 m one).
    pair = data.pair(cities.index(bercy))
    with rasterio.open(next((bercy.folder / "imgs_1").glob("*_B11.tif"))) as src:
        native = src.read(1).astype(float)
    swir = pair.before[OSCD_BANDS.index("swir16")].astype(float)
    assert swir.mean() == pytest.approx(native.mean(), rel=0.02)
    height, width = (swir.shape[0] // 2) * 2, (swir.shape[1] // 2) * 2
    back = swir[:height, :width].reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))
    assert np.corrcoef(back.ravel(), native[: height // 2, : width // 2].ravel())[0, 1] > 0.95
    # One city folder on its own, a subset of bands, and alongside an RGB folder.
    mixed = scan_datasets([root / "paris", shared_data / "change_detection" / "egy_bcd"])
    assert mixed[0].key == "oscd_s2/paris" and mixed[-1].key.startswith("egy_bcd/")
