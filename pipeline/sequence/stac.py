"""STAC of a sequence: a Collection describing the sequence cube with the datacube extension, and
one Item per period (pair) describing that pair's outputs.

Written into ``<output>/stac/`` of the sequence, with relative hrefs (the folder can be moved or
uploaded as a whole)::

    stac/collection.json         the Collection: the sequence cube (``sequence.zarr``) and the
                                 sequence's other files as assets; ``cube:dimensions`` (time, pair,
                                 y, x, target) and ``cube:variables`` of the sequence cube; the
                                 windows (``seg2change:windows``); an ``item`` link per pair
    stac/<NNN_start_start>.json  the Item of pair NNN (:meth:`SequenceSpec.pair_name`):
                                 ``start_datetime``/``end_datetime`` of its two windows, the files its
                                 job published (change cube, COGs, statistics, quick-look) as assets,
                                 ``cube:dimensions`` and ``cube:variables`` of its change cube, and a
                                 ``via`` link to the pair's own STAC Item when its job wrote one

The Items are built as a job's Item is (:func:`pipeline.publish.stac.build_item`: projection,
file and processing fields, ``derived_from`` links to the pair's input items); the Collection with
pystac's :class:`~pystac.Collection` and :class:`~pystac.extensions.datacube.DatacubeExtension`.
Every document is validated (:func:`pipeline.publish.stac_validation.validate_stac`; offline, the
STAC core schemas: the extension schemas are reported as skipped) before any is written; the
Items are written first and the Collection last, each replaced atomically. Item files of pairs that
the sequence no longer has (after ``--overwrite`` with fewer windows) are not linked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pystac
from pystac.extensions.datacube import DatacubeExtension, Dimension, Variable

from pipeline.change_cube import ChangeCubeInfo, describe_change_cube
from pipeline.cube_read import recorded_provenance
from pipeline.layout import COGS, STAC, STAC_COLLECTION, OutputLayout
from pipeline.publish.cogs import COG_MEDIA_TYPE
from pipeline.publish.publishers import PARQUET_MEDIA_TYPE
from pipeline.publish.stac import (
    FILE_EXTENSION,
    STAC_VERSION,
    ZARR_MEDIA_TYPE,
    AssetFile,
    build_item,
    multihash_sha256,
)
from pipeline.publish.stac_validation import StacValidation, validate_stac
from pipeline.sequence.cube import SEQUENCE_CUBE
from pipeline.sequence.spec import SequenceSpec
from pipeline.storage import relative_href, replace_atomically

__all__ = [
    "DATACUBE_EXTENSION",
    "SequenceAsset",
    "SequenceStac",
    "build_period_item",
    "build_sequence_collection",
    "collection_id",
    "write_sequence_stac",
]

#: The datacube extension schema that pystac writes (v2.2.0).
DATACUBE_EXTENSION = DatacubeExtension.get_schema_uri()


@dataclass(frozen=True)
class SequenceAsset:
    """A file (or Zarr folder) of the sequence to list as an asset of the Collection.

    Attributes
    ----------
    key, path, media_type, roles, title
        As a STAC asset's; ``path`` is local (its href is made relative to ``stac/``).
    """

    key: str
    path: Path
    media_type: str
    roles: tuple[str, ...]
    title: str


@dataclass(frozen=True)
class SequenceStac:
    """What :func:`write_sequence_stac` wrote.

    Attributes
    ----------
    collection
        ``stac/collection.json``.
    items
        The Item of each pair, in pair order.
    validation
        What the validation checked: the Collection's, then each Item's.
    """

    collection: Path
    items: tuple[Path, ...]
    validation: tuple[StacValidation, ...]


def collection_id(spec: SequenceSpec) -> str:
    """The sequence's Collection id: ``seg2change-sequence-`` and a hash of its base job, so that
    appending windows keeps it."""
    digest = hashlib.sha256(json.dumps(spec.base, sort_keys=True, default=str).encode()).hexdigest()
    return f"seg2change-sequence-{digest[:16]}"


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _spatial_dimensions(info: ChangeCubeInfo) -> dict[str, Dimension]:
    """The ``x`` and ``y`` dimensions of the grid (pixel edges as extent, the pixel size as step)."""
    west, south, east, north = info.bounds
    epsg = info.crs.to_epsg()
    system: int | str = epsg if epsg else info.crs.to_wkt()
    return {
        "x": Dimension.from_dict(
            {
                "type": "spatial",
                "axis": "x",
                "extent": [west, east],
                "step": float(info.transform.a),
                "reference_system": system,
            }
        ),
        "y": Dimension.from_dict(
            {
                "type": "spatial",
                "axis": "y",
                "extent": [south, north],
                "step": float(info.transform.e),
                "reference_system": system,
            }
        ),
    }


def _target_dimension(info: ChangeCubeInfo) -> Dimension:
    return Dimension.from_dict(
        {"type": "target", "values": list(info.targets), "description": "the job's target classes"}
    )


def _variable(dims: Sequence[str], description: str, unit: str | None = None) -> Variable:
    fields: dict[str, Any] = {"dimensions": list(dims), "type": "data", "description": description}
    if unit is not None:
        fields["unit"] = unit
    return Variable(fields)


def _pair_variables(pair: str) -> dict[str, Variable]:
    """The change layers, with ``pair`` in front of their dimensions in the sequence cube (``""``: the
    pair's own change cube)."""
    lead = (pair,) if pair else ()
    return {
        "change_probability": _variable((*lead, "y", "x"), "probability of change (NaN nodata)", "1"),
        "change": _variable((*lead, "y", "x"), "binary change: 1 changed, 0 not, 255 nodata"),
        "target_change": _variable(
            (*lead, "target", "y", "x"), "change into or out of each target class: 1, else 0; 255 nodata"
        ),
        "transition": _variable(
            (*lead, "y", "x"),
            "class transition code class_before * K + class_after where changed (K classes), 65534 "
            "unchanged, 65535 nodata",
        ),
    }


def _sequence_variables() -> dict[str, Variable]:
    window = "window number (1-based)"
    return {
        **_pair_variables("pair"),
        "class": _variable(
            ("time", "y", "x"), "each window's class (channel index of the classes), 255 nodata"
        ),
        "first_change": _variable(
            ("y", "x"), "window after the first pair that changed; 0 none, 65535 nodata", window
        ),
        "last_change": _variable(
            ("y", "x"), "window after the last pair that changed; 0 none, 65535 nodata", window
        ),
        "n_changes": _variable(("y", "x"), "number of pairs that changed; 65535 nodata", "count"),
        "first_target_change": _variable(
            ("target", "y", "x"), "per target, the window after the first pair that changed it", window
        ),
    }


def _pair_assets(spec: SequenceSpec, k: int) -> list[AssetFile]:
    """The files pair ``k``'s job published, as Item assets (those present)."""
    layout = OutputLayout.of(spec.pair_output(k))
    root = spec.pair_output(k)
    assets = [
        AssetFile(
            "change_cube", layout.change_cube.local_path, ZARR_MEDIA_TYPE, ("data",), "change cube (Zarr)"
        )
    ]
    for cog in sorted((root / COGS).glob("*.tif")):
        layer = cog.name.removesuffix(".tif")
        assets.append(AssetFile(layer, cog, COG_MEDIA_TYPE, ("data",), f"{layer.replace('_', ' ')} (COG)"))
        sidecar = cog.with_name(f"{cog.name}.aux.xml")
        if sidecar.is_file():
            assets.append(
                AssetFile(
                    f"{layer}_categories",
                    sidecar,
                    "application/xml",
                    ("metadata",),
                    f"{layer} category names",
                )
            )
    for key, location, media_type, roles, title in (
        (
            "statistics_parquet",
            layout.statistics_parquet,
            PARQUET_MEDIA_TYPE,
            ("metadata",),
            "statistics (Parquet)",
        ),
        ("statistics_json", layout.statistics_json, "application/json", ("metadata",), "statistics (JSON)"),
        ("quicklook", layout.quicklook, "image/png", ("overview",), "quick-look: before, after, change"),
    ):
        if location.local_path.is_file():
            assets.append(AssetFile(key, location.local_path, media_type, roles, title))
    return assets


def _provenance(spec: SequenceSpec, k: int) -> dict[str, Any]:
    """Pair ``k``'s discovery record (its ``provenance.json``, else its input cube's), or none."""
    layout = OutputLayout.of(spec.pair_output(k))
    if layout.provenance.local_path.is_file():
        recorded: dict[str, Any] = json.loads(layout.provenance.local_path.read_text())
        return recorded
    if layout.input_cube.local_path.is_dir():
        return recorded_provenance(layout.input_cube) or {}
    return {}


def build_period_item(spec: SequenceSpec, k: int, stac_dir: Path) -> dict[str, Any]:
    """Build the Item of pair ``k`` (see the module's notes), to be written into ``stac_dir``.

    Raises
    ------
    PublishError
        When the pair's change cube is missing or incomplete (run the sequence first).
    """
    info = describe_change_cube(OutputLayout.of(spec.pair_output(k)).change_cube)
    before, after = spec.windows[k - 1], spec.windows[k]
    dates = spec.window_dates()
    name = spec.pair_name(k)
    item = build_item(
        info,
        item_id=f"{collection_id(spec)}-{name}",
        collection_id=collection_id(spec),
        start=before.start,
        end=after.end,
        provenance=_provenance(spec, k),
        lineage=(
            f"Pair {k} of the sequence {Path(spec.output).name}: the windows {dates[k - 1]} and {dates[k]} "
            f"run as one seg2change change-detection job ({name}); its own STAC Item (the via link) "
            "describes its inputs and models."
        ),
        assets=_pair_assets(spec, k),
        item_dir=stac_dir,
        title=f"seg2change sequence pair {k}: {before.start:%Y-%m-%d} to {after.end:%Y-%m-%d}",
    )
    own = OutputLayout.of(spec.pair_output(k)).stac_item.local_path
    if own.is_file():
        item["links"].append(
            {
                "rel": "via",
                "href": relative_href(own, stac_dir),
                "type": "application/geo+json",
                "title": "the pair's own STAC Item",
            }
        )
    dimensions = {
        **_spatial_dimensions(info),
        "time": Dimension.from_dict(
            {
                "type": "temporal",
                "extent": [_iso(before.start), _iso(after.end)],
                "description": "the pair's before and after windows",
            }
        ),
        "target": _target_dimension(info),
    }
    variables = {
        **_pair_variables(""),
        **{
            f"class_{date}": _variable(("y", "x"), f"class on the {date} date (channel index), 255 nodata")
            for date in ("before", "after")
        },
    }
    item["stac_extensions"].append(DATACUBE_EXTENSION)
    item["properties"].update(
        {
            "cube:dimensions": {key: dim.to_dict() for key, dim in dimensions.items()},
            "cube:variables": {key: var.to_dict() for key, var in variables.items()},
            "seg2change:pair": k,
            "seg2change:window": k + 1,
            "seg2change:windows": [dates[k - 1], dates[k]],
        }
    )
    return item


def _asset(asset: SequenceAsset, stac_dir: Path) -> pystac.Asset:
    fields: dict[str, Any] = {}
    if asset.path.is_file():
        fields = {"file:size": asset.path.stat().st_size, "file:checksum": multihash_sha256(asset.path)}
    return pystac.Asset(
        href=relative_href(asset.path, stac_dir),
        title=asset.title,
        media_type=asset.media_type,
        roles=list(asset.roles),
        extra_fields=fields,
    )


def _sequence_dimensions(spec: SequenceSpec, pairs: int, info: ChangeCubeInfo) -> dict[str, Dimension]:
    """The sequence cube's dimensions: ``time`` (the windows), ``pair``, ``x``, ``y`` and ``target``."""
    windows = spec.windows[: pairs + 1]
    return {
        "time": Dimension.from_dict(
            {
                "type": "temporal",
                "extent": [_iso(windows[0].start), _iso(windows[-1].end)],
                "values": [_iso(w.start) for w in windows],
                "description": "the windows, by their start (seg2change:windows gives each START/END)",
            }
        ),
        "pair": Dimension.from_dict(
            {
                "type": "pair",
                "values": [spec.pair_name(k) for k in range(1, pairs + 1)],
                "description": "consecutive pairs of windows: pair k compares windows k and k + 1",
            }
        ),
        **_spatial_dimensions(info),
        "target": _target_dimension(info),
    }


def build_sequence_collection(
    spec: SequenceSpec,
    pairs: int,
    items: Sequence[Mapping[str, Any]],
    assets: Sequence[SequenceAsset],
    stac_dir: Path,
) -> dict[str, Any]:
    """Build the Collection of the first ``pairs`` pairs (see the module's notes).

    Parameters
    ----------
    spec
        The sequence.
    pairs
        The pairs stacked in the sequence cube.
    items
        Their Items (:func:`build_period_item`), in pair order; linked as ``./<pair name>.json``.
    assets
        The sequence's files: the sequence cube and whatever else was published beside it.
    stac_dir
        The folder the Collection is written to (hrefs are relative to it).
    """
    info = describe_change_cube(OutputLayout.of(spec.pair_output(1)).change_cube)
    windows = spec.windows[: pairs + 1]
    dates = spec.window_dates()[: pairs + 1]
    bbox = [min(i["bbox"][n] for i in items) if n < 2 else max(i["bbox"][n] for i in items) for n in range(4)]
    collection = pystac.Collection(
        id=collection_id(spec),
        title=f"seg2change sequence {Path(spec.output).name}",
        description=(
            f"Change through time by seg2change over {len(windows)} windows ({pairs} consecutive pairs): "
            "change probability, binary change, class transitions and per-target change per pair, the "
            "class of each window, and the first-change, last-change and number-of-changes layers "
            "(window numbers) in one Zarr cube; one Item per pair with that pair's outputs."
        ),
        extent=pystac.Extent(
            pystac.SpatialExtent([bbox]),
            pystac.TemporalExtent([[windows[0].start, windows[-1].end]]),
        ),
        license="other",
        keywords=["change detection", "time series", "seg2change", *info.targets],
        providers=[
            pystac.Provider("seg2change", roles=[pystac.ProviderRole.PROCESSOR, pystac.ProviderRole.PRODUCER])
        ],
        extra_fields={"seg2change:windows": dates, "seg2change:classes": list(info.classes)},
    )
    collection.clear_links()
    collection.add_link(pystac.Link("root", f"./{STAC_COLLECTION}", media_type="application/json"))
    for k, item in enumerate(items, 1):
        collection.add_link(
            pystac.Link(
                "item", f"./{spec.pair_name(k)}.json", media_type="application/geo+json", title=item["id"]
            )
        )
    for asset in assets:
        collection.add_asset(asset.key, _asset(asset, stac_dir))
    dimensions = _sequence_dimensions(spec, pairs, info)
    DatacubeExtension.ext(collection, add_if_missing=True).apply(dimensions, _sequence_variables())
    doc = collection.to_dict(include_self_link=False, transform_hrefs=False)
    doc["stac_version"] = STAC_VERSION
    if any("file:size" in a for a in doc.get("assets", {}).values()):
        doc["stac_extensions"] = [*doc.get("stac_extensions", []), FILE_EXTENSION]
    return doc


def write_sequence_stac(
    spec: SequenceSpec, pairs: int, assets: Sequence[SequenceAsset] = (), stac_dir: Path | None = None
) -> SequenceStac:
    """Build, validate and write the Collection and the Items of the first ``pairs`` pairs.

    Parameters
    ----------
    spec
        The sequence.
    pairs
        The pairs stacked in the sequence cube (its ``pairs_done``).
    assets
        The sequence's files besides the sequence cube (listed first, always) to list in the
        Collection.
    stac_dir
        Where; default ``stac/`` in the sequence's output folder.

    Returns
    -------
    SequenceStac

    Raises
    ------
    PublishError
        When a pair's change cube is missing or incomplete; nothing is written.
    StacValidationError
        When a document is invalid (a bug: please report it); nothing is written.
    """
    root = Path(spec.output)
    stac_dir = root / STAC if stac_dir is None else Path(stac_dir)
    cube = SequenceAsset(
        "sequence_cube", root / SEQUENCE_CUBE, ZARR_MEDIA_TYPE, ("data",), "sequence cube (Zarr)"
    )
    items = [build_period_item(spec, k, stac_dir) for k in range(1, pairs + 1)]
    collection = build_sequence_collection(spec, pairs, items, (cube, *assets), stac_dir)
    validation = (validate_stac(collection), *(validate_stac(item) for item in items))
    paths = []
    for k, item in enumerate(items, 1):
        path = stac_dir / f"{spec.pair_name(k)}.json"
        with replace_atomically(path) as tmp:
            tmp.write_text(json.dumps(item, indent=2) + "\n")
        paths.append(path)
    collection_path = stac_dir / STAC_COLLECTION
    with replace_atomically(collection_path) as tmp:
        tmp.write_text(json.dumps(collection, indent=2) + "\n")
    return SequenceStac(collection_path, tuple(paths), validation)
