"""Write a synthetic scene to disk: COGs, ground truth, STAC.

Layout of ``out_dir``::

    scene.json                       the spec and a "complete" flag (marks the folder as ours)
    collection.json                  STAC Collection (extent from the Items, truth as assets)
    items.ndjson                     one STAC Item per line, asset hrefs absolute
    catalog/collection.json          the same as a static catalog pystac can read
    catalog/<item id>/<item id>.json
    data/<item id>/<asset>.tif       one COG per band and acquisition: blue ... swir22 (uint16),
                                     qa (uint8)
    truth/class_before.tif           LandCover codes (uint8, nodata 0)
    truth/class_after.tif
    truth/change.tif                 ChangeType codes (uint8, 0 = unchanged, nodata 255)

The scene is computed block by block (``spec.block_size``) and written window by window into
tiled, ZSTD-compressed GeoTIFFs under ``.tmp/``; rio-cogeo's ``cog_translate`` (on disk, not in
memory) then turns each into a DEFLATE COG with 512 px tiles and overviews (average for
reflectance, nearest for ``qa`` and the truth). No step holds a whole band in memory, so peak
memory follows ``block_size``, not ``size``; the temporary files need about as much disk as the
outputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.io import DatasetWriter
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_translate

from pipeline.errors import OutputExistsError, SceneError
from pipeline.synthetic.atmosphere import QA, acquisition_window, cloud_cover
from pipeline.synthetic.landscape import ChangeType, LandCover, landscape_window
from pipeline.synthetic.spec import Acquisition, Epoch, SceneSpec, acquisitions
from pipeline.synthetic.spectra import BAND_NAMES, NODATA, OFFSET, SCALE, surface_reflectance
from pipeline.synthetic.stac import (
    QA_ASSET,
    TRUTH_ASSETS,
    build_collection,
    build_item,
    footprint,
    write_catalog,
    write_collection,
    write_items_ndjson,
)

__all__ = [
    "GENERATOR_VERSION",
    "MARKER",
    "GeneratedScene",
    "Progress",
    "generate_scene",
    "iter_blocks",
    "scene_is_current",
]

#: File that marks a folder as a generated scene (and so as safe to overwrite).
MARKER = "scene.json"
_OWNED = (
    *(name + suffix for name in (MARKER, "collection.json", "items.ndjson") for suffix in ("", ".part")),
    "catalog",
    "data",
    "truth",
    ".tmp",
)
_GENERATOR = "pipeline.synthetic"
#: Version of what the generator draws, recorded in :data:`MARKER`. Raised whenever one spec gives
#: other pixels or items (2: construction makes a whole estate, grass between the new buildings;
#: 3: each item links its static catalog file as ``canonical``), so that :func:`ensure_scene`
#: makes a scene of an earlier version again instead of reusing it.
GENERATOR_VERSION = 3
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


@dataclass(frozen=True)
class GeneratedScene:
    """Where a generated scene lies and what it holds.

    Attributes
    ----------
    spec
        The spec it was generated from.
    root
        The output folder (absolute).
    collection_path
        ``collection.json`` (STAC Collection, no item links; pair it with ``items_path``).
    items_path
        ``items.ndjson``: one Item per line, asset hrefs absolute.
    catalog_dir
        Folder of the static catalog; ``catalog_dir / "collection.json"`` links the Items.
    truth_class_before, truth_class_after, truth_change
        Ground-truth COGs (:class:`~pipeline.synthetic.landscape.LandCover` and
        :class:`~pipeline.synthetic.landscape.ChangeType` codes).
    items
        The Items as dicts (as in ``items.ndjson``), before epoch first, in date order.
    bbox_wgs84
        ``(west, south, east, north)`` in degrees.
    bbox_utm
        ``(minx, miny, maxx, maxy)`` in the scene CRS.
    before_window, after_window
        UTC datetimes (first and last instant) of each epoch; each contains its acquisitions.
    """

    spec: SceneSpec
    root: Path
    collection_path: Path
    items_path: Path
    catalog_dir: Path
    truth_class_before: Path
    truth_class_after: Path
    truth_change: Path
    items: list[dict[str, Any]] = field(hash=False)
    bbox_wgs84: tuple[float, float, float, float]
    bbox_utm: tuple[float, float, float, float]
    before_window: tuple[datetime, datetime]
    after_window: tuple[datetime, datetime]

    def asset_path(self, item_id: str, asset: str) -> Path:
        """Path of one asset's COG."""
        return _asset_path(self.root, item_id, asset)

    def items_of(self, epoch: Epoch) -> list[dict[str, Any]]:
        """The Items of one epoch."""
        return [i for i in self.items if i["properties"]["synthetic:epoch"] == Epoch(epoch).value]


def _asset_path(root: Path, item_id: str, asset: str) -> Path:
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


def _prepare(out_dir: Path, overwrite: bool) -> Path:
    """Make ``out_dir`` ready, deleting only what an earlier generation wrote there."""
    root = Path(out_dir).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise OutputExistsError(f"{root} is a file: give a folder for the scene")
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"{root} is not empty: give a new or empty folder, or pass --overwrite (overwrite=True "
                "in Python) to replace a scene generated there before"
            )
        marker = root / MARKER
        try:
            ours = json.loads(marker.read_text()).get("generator") == _GENERATOR
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise OutputExistsError(
                f"{root} holds files that are not a generated scene (no valid {MARKER}); nothing was "
                "deleted: give a new or empty folder"
            )
        for name in _OWNED:
            path = root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _write_marker(root: Path, spec: SceneSpec, complete: bool) -> None:
    data = {
        "generator": _GENERATOR,
        "version": GENERATOR_VERSION,
        "complete": complete,
        "spec": spec.to_dict(),
    }
    tmp = root / (MARKER + ".part")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, root / MARKER)


@dataclass
class _Target:
    """One output raster: its temporary tiled GeoTIFF and how to turn it into a COG."""

    tmp: Path
    dst: Path
    dtype: str
    nodata: int
    resampling: str
    description: str
    scale: float = 1.0
    colormap: dict[int, tuple[int, int, int, int]] | None = None


def _open_tmp(stack: contextlib.ExitStack, spec: SceneSpec, target: _Target) -> DatasetWriter:
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


def _to_cog(target: _Target) -> None:
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
    ChangeType.BURN: (40, 20, 20),
}


def generate_scene(
    spec: SceneSpec,
    out_dir: Path | str,
    progress: Progress | None = None,
    *,
    overwrite: bool = False,
) -> GeneratedScene:
    """Generate a scene: COGs of every acquisition, ground truth and STAC metadata.

    Parameters
    ----------
    spec
        What to generate (same spec, same pixels).
    out_dir
        Output folder; created if missing. See the module docstring for its layout.
    progress
        Called as ``progress(stage, done, total)`` after each block (stage ``"blocks"``) and
        each COG (stage ``"cogs"``).
    overwrite
        Replace a scene generated in ``out_dir`` before. Only the files a generation writes
        are deleted, and only in a folder marked by ``scene.json``.

    Returns
    -------
    GeneratedScene

    Raises
    ------
    OutputExistsError
        If ``out_dir`` is not empty and ``overwrite`` is false, or holds something other than a
        generated scene.
    SceneError
        If ``spec`` is not a :class:`SceneSpec`.
    """
    if not isinstance(spec, SceneSpec):
        raise SceneError(f"spec is a {type(spec).__name__}: give a pipeline.synthetic.SceneSpec")
    root = _prepare(Path(out_dir), overwrite)
    _write_marker(root, spec, complete=False)
    tmp_dir = root / ".tmp"
    acqs = acquisitions(spec)
    truth_dir = root / "truth"
    truth = {
        key: _Target(
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
        (a.item_id, name): _Target(
            tmp_dir / a.item_id / f"{name}.tif",
            _asset_path(root, a.item_id, name),
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
        a.item_id: _Target(
            tmp_dir / a.item_id / f"{QA_ASSET}.tif",
            _asset_path(root, a.item_id, QA_ASSET),
            "uint8",
            int(QA.NODATA),
            "nearest",
            "qa: 0 clear, 1 cloud, 2 cloud shadow, 255 nodata",
        )
        for a in acqs
    }
    try:
        counts = _write_blocks(spec, acqs, truth, bands, qas, progress)
        targets = [*truth.values(), *bands.values(), *qas.values()]
        for done, target in enumerate(targets, 1):
            _to_cog(target)
            if progress is not None:
                progress("cogs", done, len(targets))
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)

    items = []
    for a in acqs:
        cloud, shadow, valid = counts[a.item_id]
        hrefs = {name: str(_asset_path(root, a.item_id, name)) for name in (*BAND_NAMES, QA_ASSET)}
        items.append(build_item(spec, a, hrefs, 100.0 * cloud / valid, 100.0 * shadow / valid))
    collection = build_collection(spec, items, {key: str(t.dst) for key, t in truth.items()})
    collection_path = root / "collection.json"
    items_path = root / "items.ndjson"
    catalog_dir = root / "catalog"
    for item in items:
        # The item's lasting address: a STAC API serving items.ndjson (the demo's, on a loopback
        # port that closes after the run) gives its own self links; outputs link this one instead.
        item["links"] = [
            {
                "rel": "canonical",
                "href": str(catalog_dir / item["id"] / f"{item['id']}.json"),
                "type": "application/geo+json",
            }
        ]
    write_collection(collection, collection_path)
    write_items_ndjson(items, items_path)
    write_catalog(collection, items, catalog_dir)
    _write_marker(root, spec, complete=True)
    return _scene(spec, root, items)


def _scene(spec: SceneSpec, root: Path, items: list[dict[str, Any]]) -> GeneratedScene:
    _, bbox = footprint(spec)
    truth_dir = root / "truth"
    return GeneratedScene(
        spec=spec,
        root=root,
        collection_path=root / "collection.json",
        items_path=root / "items.ndjson",
        catalog_dir=root / "catalog",
        truth_class_before=truth_dir / TRUTH_ASSETS["class_before"][0],
        truth_class_after=truth_dir / TRUTH_ASSETS["class_after"][0],
        truth_change=truth_dir / TRUTH_ASSETS["change"][0],
        items=items,
        bbox_wgs84=(bbox[0], bbox[1], bbox[2], bbox[3]),
        bbox_utm=spec.bounds_utm,
        before_window=spec.epoch_window(Epoch.BEFORE),
        after_window=spec.epoch_window(Epoch.AFTER),
    )


def open_scene(out_dir: Path | str) -> GeneratedScene:
    """Open a scene generated earlier in ``out_dir``.

    Raises
    ------
    OutputExistsError
        If the folder holds no complete generated scene (generate it again with ``overwrite=True``).
    """
    root = Path(out_dir).expanduser().resolve()
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        raise OutputExistsError(f"{root} holds no generated scene ({MARKER} missing or unreadable)") from None
    if marker.get("generator") != _GENERATOR or not marker.get("complete"):
        raise OutputExistsError(
            f"the scene in {root} is incomplete (its generation was interrupted): generate it again with overwrite"
        )
    items_path = root / "items.ndjson"
    items = [json.loads(line) for line in items_path.read_text().splitlines() if line.strip()]
    return _scene(SceneSpec.from_dict(marker["spec"]), root, items)


def scene_is_current(spec: SceneSpec, out_dir: Path | str) -> bool:
    """Whether ``out_dir`` holds a complete scene of ``spec`` made by this version of the generator."""
    try:
        existing = open_scene(out_dir)
        version = json.loads((Path(out_dir).expanduser() / MARKER).read_text()).get("version", 1)
    except (OutputExistsError, OSError, ValueError):
        return False
    return existing.spec == spec and version == GENERATOR_VERSION


def ensure_scene(spec: SceneSpec, out_dir: Path | str, progress: Progress | None = None) -> GeneratedScene:
    """Return the scene of ``spec`` in ``out_dir``, generating it only when it is missing or differs.

    A folder that holds a complete scene of the same spec, made by this version of the generator
    (:data:`GENERATOR_VERSION`), is reused as it is; a scene of another spec or version (or an
    interrupted one) is replaced; a folder with anything else is refused.
    """
    if scene_is_current(spec, out_dir):
        return open_scene(out_dir)
    return generate_scene(spec, out_dir, progress, overwrite=True)


def _write_blocks(
    spec: SceneSpec,
    acqs: list[Acquisition],
    truth: dict[str, _Target],
    bands: dict[tuple[str, str], _Target],
    qas: dict[str, _Target],
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
