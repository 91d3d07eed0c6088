"""The rasters of a synthetic scene: computed block by block, then converted to COGs.

The scene is computed block by block (``spec.block_size``) and written window by window into
tiled, ZSTD-compressed GeoTIFFs under a temporary folder; rio-cogeo's ``cog_translate`` (on disk,
not in memory) then turns each into a DEFLATE COG with 512 px tiles and overviews (average for
reflectance, nearest for ``qa`` and the truth). No step holds a whole band in memory.
"""

from __future__ import annotations

import contextlib
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.io import DatasetWriter
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_translate

from pipeline.synthetic.atmosphere import QA, acquisition_window, cloud_cover
from pipeline.synthetic.landscape import ChangeType, LandCover, landscape_window
from pipeline.synthetic.spec import Acquisition, Epoch, SceneSpec
from pipeline.synthetic.spectra import BAND_NAMES, NODATA, OFFSET, SCALE, surface_reflectance
from pipeline.synthetic.stac import QA_ASSET, TRUTH_ASSETS

__all__ = [
    "Progress",
    "RasterTarget",
    "SceneRasters",
    "asset_path",
    "iter_blocks",
    "plan_rasters",
    "write_rasters",
]

_TMP_TILE = 256
_COG_PROFILE: dict[str, Any] = {
    "driver": "GTiff",
    "interleave": "pixel",
    "tiled": True,
    "blockxsize": 512,
    "blockysize": 512,
    "compress": "DEFLATE",
    "predictor": 2,
    "BIGTIFF": "IF_SAFER",
}
_GDAL_CACHE_MB = 64

#: ``progress(stage, done, total)``; stages ``"blocks"`` then ``"cogs"``.
Progress = Callable[[str, int, int], None]


def asset_path(root: Path, item_id: str, asset: str) -> Path:
    """Path of one asset's COG in the scene folder ``root``."""
    return root / "data" / item_id / f"{asset}.tif"


def iter_blocks(spec: SceneSpec) -> Iterator[Window]:
    """Windows of ``spec.block_size`` covering the scene, row by row.

    Parameters
    ----------
    spec
        The scene.

    Yields
    ------
    rasterio.windows.Window
        Integer windows; those on the right and bottom edges may be smaller.
    """
    step = spec.block_size
    for row in range(0, spec.size, step):
        for col in range(0, spec.size, step):
            yield Window(col, row, min(step, spec.size - col), min(step, spec.size - row))


@dataclass
class RasterTarget:
    """One output raster: its temporary tiled GeoTIFF and how to turn it into a COG."""

    tmp: Path
    dst: Path
    dtype: str
    nodata: int
    resampling: str
    description: str
    scale: float = 1.0
    colormap: dict[int, tuple[int, int, int, int]] | None = None


def _open_tmp(stack: contextlib.ExitStack, spec: SceneSpec, target: RasterTarget) -> DatasetWriter:
    target.tmp.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": spec.size,
        "height": spec.size,
        "count": 1,
        "dtype": target.dtype,
        "nodata": target.nodata,
        "crs": spec.crs,
        "transform": spec.transform,
        "tiled": True,
        "blockxsize": _TMP_TILE,
        "blockysize": _TMP_TILE,
        "compress": "ZSTD",
        "zstd_level": 1,
        "predictor": 2,
        "BIGTIFF": "IF_SAFER",
    }
    dataset: DatasetWriter = stack.enter_context(rasterio.open(target.tmp, "w", **profile))
    dataset.set_band_description(1, target.description)
    if target.scale != 1.0:
        dataset.scales = (target.scale,)
        dataset.offsets = (OFFSET,)
    if target.colormap is not None:
        dataset.write_colormap(1, target.colormap)
    return dataset


def _to_cog(target: RasterTarget) -> None:
    target.dst.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(_COG_PROFILE)
    if target.dtype == "uint16":
        # Reflectance with sensor noise barely compresses; level 1 is as small and twice as fast.
        profile["zlevel"] = 1
    with warnings.catch_warnings():
        # rio-cogeo 7.0 multiplies affines with `*` (its own PendingDeprecationWarning, not ours).
        warnings.filterwarnings("ignore", "Use `@` matmul", PendingDeprecationWarning)
        cog_translate(
            str(target.tmp),
            str(target.dst),
            profile,
            nodata=target.nodata,
            overview_resampling=target.resampling,  # type: ignore[arg-type]
            in_memory=False,
            quiet=True,
            config={"GDAL_TIFF_OVR_BLOCKSIZE": "512", "GDAL_CACHEMAX": _GDAL_CACHE_MB},
        )
    target.tmp.unlink()


def _colormap(colors: dict[int, tuple[int, int, int]]) -> dict[int, tuple[int, int, int, int]]:
    return {code: (*rgb, 255) for code, rgb in colors.items()}


_CHANGE_COLORS: dict[int, tuple[int, int, int]] = {
    ChangeType.NONE: (255, 255, 255),
    ChangeType.CONSTRUCTION: (220, 40, 40),
    ChangeType.CLEARING: (165, 120, 80),
    ChangeType.FLOOD: (31, 120, 180),
    ChangeType.DRAIN: (250, 200, 120),
    ChangeType.BURN: LandCover.BURNED.color,
}


@dataclass(frozen=True)
class SceneRasters:
    """Every raster of a scene: the truth by key, the bands by ``(item id, band)``, the qa by item id."""

    truth: dict[str, RasterTarget]
    bands: dict[tuple[str, str], RasterTarget]
    qas: dict[str, RasterTarget]

    def all(self) -> list[RasterTarget]:
        """Truth, bands and qa, in the order they are converted."""
        return [*self.truth.values(), *self.bands.values(), *self.qas.values()]


def plan_rasters(spec: SceneSpec, root: Path, acqs: list[Acquisition]) -> SceneRasters:
    """The rasters of a scene in ``root``, with their temporary files under ``root/.tmp``."""
    tmp_dir = root / ".tmp"
    truth_dir = root / "truth"
    truth = {
        key: RasterTarget(
            tmp_dir / f"truth-{key}.tif",
            truth_dir / name,
            "uint8",
            255 if key == "change" else int(LandCover.NODATA),
            "nearest",
            title,
            colormap=_colormap(_CHANGE_COLORS if key == "change" else {int(c): c.color for c in LandCover}),
        )
        for key, (name, title) in TRUTH_ASSETS.items()
    }
    bands = {
        (a.item_id, name): RasterTarget(
            tmp_dir / a.item_id / f"{name}.tif",
            asset_path(root, a.item_id, name),
            "uint16",
            NODATA,
            "average",
            name,
            scale=SCALE,
        )
        for a in acqs
        for name in BAND_NAMES
    }
    qas = {
        a.item_id: RasterTarget(
            tmp_dir / a.item_id / f"{QA_ASSET}.tif",
            asset_path(root, a.item_id, QA_ASSET),
            "uint8",
            int(QA.NODATA),
            "nearest",
            "qa: 0 clear, 1 cloud, 2 cloud shadow, 255 nodata",
        )
        for a in acqs
    }
    return SceneRasters(truth, bands, qas)


def write_rasters(
    spec: SceneSpec,
    acqs: list[Acquisition],
    rasters: SceneRasters,
    tmp_dir: Path,
    progress: Progress | None,
) -> dict[str, tuple[int, int, int]]:
    """Compute every raster and convert it to its COG, removing ``tmp_dir`` in any case.

    Returns
    -------
    dict
        ``(cloud, shadow, valid)`` pixel counts of each item's qa, by item id.
    """
    try:
        counts = _write_blocks(spec, acqs, rasters.truth, rasters.bands, rasters.qas, progress)
        targets = rasters.all()
        for done, target in enumerate(targets, 1):
            _to_cog(target)
            if progress is not None:
                progress("cogs", done, len(targets))
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)

    return counts


def _write_blocks(
    spec: SceneSpec,
    acqs: list[Acquisition],
    truth: dict[str, RasterTarget],
    bands: dict[tuple[str, str], RasterTarget],
    qas: dict[str, RasterTarget],
    progress: Progress | None,
) -> dict[str, tuple[int, int, int]]:
    """Compute the scene block by block into the temporary GeoTIFFs; return qa counts per item."""
    counts = {a.item_id: (0, 0, 0) for a in acqs}
    windows = list(iter_blocks(spec))
    with rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_MB), contextlib.ExitStack() as stack:
        truth_ds = {key: _open_tmp(stack, spec, t) for key, t in truth.items()}
        band_ds = {key: _open_tmp(stack, spec, t) for key, t in bands.items()}
        qa_ds = {key: _open_tmp(stack, spec, t) for key, t in qas.items()}
        for done, window in enumerate(windows, 1):
            land = landscape_window(spec, window)
            truth_ds["class_before"].write(land.before, 1, window=window)
            truth_ds["class_after"].write(land.after, 1, window=window)
            truth_ds["change"].write(land.change, 1, window=window)
            surfaces = {e: surface_reflectance(spec, window, e, land) for e in Epoch}
            del land
            for a in acqs:
                arrays = acquisition_window(spec, a, window, surfaces[a.epoch])
                for name in BAND_NAMES:
                    band_ds[(a.item_id, name)].write(arrays[name], 1, window=window)
                qa = arrays[QA_ASSET].astype(np.uint8)
                qa_ds[a.item_id].write(qa, 1, window=window)
                cloud, shadow, valid = cloud_cover(qa)
                c0, s0, v0 = counts[a.item_id]
                counts[a.item_id] = (c0 + cloud, s0 + shadow, v0 + valid)
                del arrays
            del surfaces
            if progress is not None:
                progress("blocks", done, len(windows))
    return counts
