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

The rasters are computed block by block (``spec.block_size``) into tiled GeoTIFFs under ``.tmp/``
and converted to COGs (:mod:`pipeline.synthetic.rasters`). No step holds a whole band in memory,
so peak memory follows ``block_size``, not ``size``; the temporary files need about as much disk
as the outputs.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.errors import OutputExistsError, SceneError
from pipeline.synthetic.rasters import (
    Progress,
    RasterTarget,
    asset_path,
    iter_blocks,
    plan_rasters,
    write_rasters,
)
from pipeline.synthetic.spec import Acquisition, Epoch, SceneSpec, acquisitions
from pipeline.synthetic.spectra import BAND_NAMES
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
    "iter_blocks",  # re-exported: it moved to pipeline.synthetic.rasters
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
        return asset_path(self.root, item_id, asset)

    def items_of(self, epoch: Epoch) -> list[dict[str, Any]]:
        """The Items of one epoch."""
        return [i for i in self.items if i["properties"]["synthetic:epoch"] == Epoch(epoch).value]


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
    acqs = acquisitions(spec)
    rasters = plan_rasters(spec, root, acqs)
    counts = write_rasters(spec, acqs, rasters, root / ".tmp", progress)
    items = _write_stac(spec, root, acqs, counts, rasters.truth)
    _write_marker(root, spec, complete=True)
    return _scene(spec, root, items)


def _write_stac(
    spec: SceneSpec,
    root: Path,
    acqs: list[Acquisition],
    counts: dict[str, tuple[int, int, int]],
    truth: dict[str, RasterTarget],
) -> list[dict[str, Any]]:
    """Write the collection, the items (NDJSON) and the static catalog; return the items."""
    items = []
    for a in acqs:
        cloud, shadow, valid = counts[a.item_id]
        hrefs = {name: str(asset_path(root, a.item_id, name)) for name in (*BAND_NAMES, QA_ASSET)}
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
    return items


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
