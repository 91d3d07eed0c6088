"""Building change made from one date and its building footprints: training pairs without labels.

Building-change labels exist for few source images, and a model trained on them learns those
images. Georeferenced imagery with building footprints (Microsoft or OpenStreetMap footprints over
any orthophoto) is plentiful. From one such image this module makes bi-temporal pairs whose change
is known exactly: the earlier date is the image with some of its buildings removed, each filled
with ground of the same image (the footprint's neighbourhood copied from a nearby place that holds
no building, blended over a soft edge), the later date is the image as it is, and the label is the
removed footprints: "a building was built here". Buildings left in both dates teach what does not
count. The training augmentation then draws each date's light, swaps dates (demolition), zooms.

Filling by copying nearby ground is written here because no kept library inpaints
multi-band imagery by example without OpenCV, which the project does not depend on.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from seg2change_core.errors import DatasetError

__all__ = [
    "BuildingRemoval",
    "FootprintImage",
    "read_footprint_image",
    "remove_buildings",
    "synthesise_building_change",
]

MANIFEST = "SYNTHETIC.json"


@dataclass(frozen=True)
class BuildingRemoval:
    """How buildings are removed from the earlier date.

    Attributes
    ----------
    share
        Chance that a building is removed (each building drawn on its own).
    ring
        Pixels around a footprint filled too (its wall, eaves and the edge of its shadow), not
        labelled.
    max_shift
        Farthest place, in pixels along each axis, the ground is copied from.
    tries
        Places tried per building before it is left standing.
    feather
        Width in pixels of the blended edge of a fill.
    min_pixels
        Footprints smaller than this (slivers cut by the image edge) are never removed.
    relocated
        Share of pairs whose earlier date is another place of the image with every building
        removed: a whole area built up, where roads, yards and trees change as well and only the
        buildings of either date are labelled (as building-change sets label it).
    """

    share: float = 0.5
    ring: int = 3
    max_shift: int = 96
    tries: int = 40
    feather: float = 1.5
    min_pixels: int = 30
    relocated: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.share <= 1.0:
            raise DatasetError(f"share must lie in (0, 1], got {self.share}")
        if not 0.0 <= self.relocated <= 1.0:
            raise DatasetError(f"relocated must lie in [0, 1], got {self.relocated}")
        if self.ring < 0 or self.max_shift < 1 or self.tries < 1 or self.feather < 0:
            raise DatasetError("ring and feather must be >= 0, max_shift and tries >= 1")


@dataclass(frozen=True)
class FootprintImage:
    """One image and its buildings on its grid.

    Attributes
    ----------
    name
        File stem of the image.
    pixels
        ``(H, W, C)`` uint8 image.
    buildings
        ``(H, W)`` int32: 0 for no building, else the footprint's number (1, 2, ...).
    """

    name: str
    pixels: NDArray[np.uint8]
    buildings: NDArray[np.int32]


def _read_footprints(path: Path) -> list[dict[str, Any]]:
    """Polygon geometries (GeoJSON dicts, CRS84) of a GeoJSON FeatureCollection."""
    try:
        collection = json.loads(path.read_text())
        features = collection["features"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(
            f"cannot read building footprints from {path} ({exc}); give a GeoJSON FeatureCollection"
        ) from exc
    crs = collection.get("crs", {}).get("properties", {}).get("name", "")
    if crs and "CRS84" not in crs and "4326" not in crs:
        raise DatasetError(
            f"{path} declares CRS {crs}; GeoJSON footprints must be in longitude/latitude (CRS84)"
        )
    polygons = [
        f["geometry"]
        for f in features
        if f.get("geometry") and f["geometry"].get("type") in ("Polygon", "MultiPolygon")
    ]
    if not polygons:
        raise DatasetError(f"{path} holds no Polygon or MultiPolygon footprints")
    return polygons


def read_footprint_image(image: str | Path, footprints: str | Path) -> FootprintImage:
    """An 8-bit georeferenced image and its footprints burnt onto its grid, one number each.

    Parameters
    ----------
    image
        GeoTIFF (or any raster rasterio reads) with a CRS; 8-bit bands.
    footprints
        GeoJSON FeatureCollection of building polygons in longitude/latitude.

    Raises
    ------
    DatasetError
        For an image without a CRS or not 8-bit, unreadable footprints, or none on the image.
    """
    return _burn_footprints(Path(image), _read_footprints(Path(footprints)))


def _burn_footprints(image: Path, polygons: Sequence[dict[str, Any]]) -> FootprintImage:
    """:func:`read_footprint_image` with the footprints already read."""
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.features import rasterize
    from rasterio.warp import transform_geom

    try:
        with rasterio.open(image) as src:
            if src.crs is None:
                raise DatasetError(f"{image} has no CRS; footprints need a georeferenced image")
            other = sorted({dtype for dtype in src.dtypes if dtype != "uint8"})
            if other:
                raise DatasetError(
                    f"{image} has {', '.join(other)} bands, not 8-bit; convert it to 8-bit first"
                )
            pixels = np.moveaxis(src.read(), 0, -1)
            crs, transform, shape = src.crs, src.transform, (src.height, src.width)
    except RasterioError as exc:
        raise DatasetError(f"cannot read {image} ({exc})") from exc
    shapes = [(transform_geom("OGC:CRS84", crs, g), n) for n, g in enumerate(polygons, start=1)]
    buildings = rasterize(shapes, out_shape=shape, transform=transform, fill=0, dtype="int32")
    if not buildings.any():
        raise DatasetError(f"no footprint falls on {image}; check that they cover it")
    return FootprintImage(image.stem, np.ascontiguousarray(pixels), buildings)


def _soft_mask(region: NDArray[np.bool_], feather: float) -> NDArray[np.float32]:
    """``region`` as weights in [0, 1], its edge blended over about ``feather`` pixels outwards."""
    from scipy.ndimage import gaussian_filter

    if feather == 0:
        return region.astype(np.float32)
    soft: NDArray[np.float32] = gaussian_filter(region.astype(np.float32), feather)
    weight: NDArray[np.float32] = np.clip(np.maximum(soft * 2.0, region), 0.0, 1.0).astype(np.float32)
    return weight


def _ground_offset(
    window: tuple[slice, slice],
    region: NDArray[np.bool_],
    occupied: NDArray[np.bool_],
    removal: BuildingRemoval,
    rng: np.random.Generator,
) -> tuple[int, int] | None:
    """A shift to a place where ``region`` (inside ``window``) covers no building, or ``None``."""
    height, width = occupied.shape
    rows, cols = window
    for _ in range(removal.tries):
        dy, dx = (int(v) for v in rng.integers(-removal.max_shift, removal.max_shift + 1, size=2))
        if abs(dy) < region.shape[0] and abs(dx) < region.shape[1]:
            continue
        top, left = rows.start + dy, cols.start + dx
        if top < 0 or left < 0 or top + region.shape[0] > height or left + region.shape[1] > width:
            continue
        if not occupied[top : top + region.shape[0], left : left + region.shape[1]][region].any():
            return dy, dx
    return None


def remove_buildings(
    scene: FootprintImage, removal: BuildingRemoval, rng: np.random.Generator
) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """The scene without some of its buildings, and the removed footprints.

    Parameters
    ----------
    scene
        Image and numbered footprints.
    removal
        How many and how.
    rng
        Draws the buildings and the places the ground comes from.

    Returns
    -------
    earlier, label
        ``(H, W, C)`` uint8 image with the removed buildings filled, and ``(H, W)`` uint8, 1
        where a removed building stood.
    """
    from scipy.ndimage import binary_dilation, find_objects

    pixels = scene.pixels.astype(np.float32)
    occupied = binary_dilation(scene.buildings > 0, iterations=removal.ring + 1)
    height, width = scene.buildings.shape[0], scene.buildings.shape[1]
    label = np.zeros((height, width), np.uint8)
    margin = removal.ring + int(np.ceil(3 * removal.feather)) + 1
    for number, box in enumerate(find_objects(scene.buildings), start=1):
        if box is None or rng.random() >= removal.share:
            continue
        rows = slice(max(box[0].start - margin, 0), min(box[0].stop + margin, height))
        cols = slice(max(box[1].start - margin, 0), min(box[1].stop + margin, width))
        footprint = scene.buildings[rows, cols] == number
        if footprint.sum() < removal.min_pixels:
            continue
        region = binary_dilation(footprint, iterations=removal.ring) if removal.ring else footprint
        weight = _soft_mask(region, removal.feather)
        weight[(scene.buildings[rows, cols] > 0) & ~footprint] = 0.0
        offset = _ground_offset((rows, cols), weight > 0.01, occupied, removal, rng)
        if offset is None:
            continue
        dy, dx = offset
        source = scene.pixels[rows.start + dy : rows.stop + dy, cols.start + dx : cols.stop + dx]
        blend = weight[..., None]
        pixels[rows, cols] = blend * source + (1.0 - blend) * pixels[rows, cols]
        label[rows, cols] |= footprint.astype(np.uint8)
    return np.rint(pixels).clip(0, 255).astype(np.uint8), label


def _write_png(array: NDArray[np.uint8], path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, optimize=False)


def synthesise_building_change(
    images: Sequence[str | Path],
    footprints: str | Path,
    out: str | Path,
    *,
    tile: int = 512,
    variants: int = 2,
    removal: BuildingRemoval | None = None,
    seed: int = 0,
) -> int:
    """Write synthetic building-change pairs as an ``A/ B/ label/`` dataset folder.

    Each image gives ``variants`` pairs per tile, each with other buildings removed; tiles with
    no removed building are skipped. Names are ``<image>-v<k>_<row>_<col>``, so the split by
    source image keeps each image's variants together. ``SYNTHETIC.json`` records how the
    folder was made.

    Parameters
    ----------
    images
        8-bit georeferenced images.
    footprints
        GeoJSON building footprints (longitude/latitude) covering them.
    out
        New or empty folder.
    tile
        Side of the written pairs (images smaller than a tile give one pair of their size).
    variants
        Pairs drawn per tile.
    removal
        How buildings are removed (default :class:`BuildingRemoval`).
    seed
        Seed of the draws: the same inputs and seed give the same files.

    Returns
    -------
    int
        Pairs written.

    Raises
    ------
    DatasetError
        For a non-empty ``out``, no images, bad sizes, or inputs :func:`read_footprint_image`
        refuses.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out} is not empty; give a new folder (nothing in it was changed)")
    if not images:
        raise DatasetError("give at least one image")
    if tile < 32 or variants < 1:
        raise DatasetError(f"tile must be >= 32 px and variants >= 1, got {tile} and {variants}")
    removal = removal or BuildingRemoval()
    polygons = _read_footprints(Path(footprints))
    rng = np.random.default_rng(seed)
    written = 0
    try:
        for image in images:  # one image in memory at a time
            written += _write_image(
                _burn_footprints(Path(image), polygons), variants, tile, removal, rng, out
            )
    except BaseException:
        for part in _PARTS:  # what this call wrote into the folder, new or empty before it
            shutil.rmtree(out / part, ignore_errors=True)
        raise
    manifest = {
        "made_by": "seg2change_core.datasets.synthetic_buildings.synthesise_building_change",
        "images": [str(Path(i)) for i in images],
        "footprints": str(footprints),
        "tile": tile,
        "variants": variants,
        "removal": asdict(removal),
        "seed": seed,
        "pairs": written,
        "label": "0 = no change, 255 = building built between A and B (removed from A)",
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return written


_PARTS = ("A", "B", "label")


def _write_image(
    scene: FootprintImage,
    variants: int,
    tile: int,
    removal: BuildingRemoval,
    rng: np.random.Generator,
    out: Path,
) -> int:
    """Write the pairs of one image's variants; the number written."""
    cleared = _cleared(scene, removal, rng) if removal.relocated > 0 else None
    written = 0
    for variant in range(variants):
        earlier, label = remove_buildings(scene, removal, rng)
        written += _write_tiles(
            _Variant(scene, f"{scene.name}-v{variant}", earlier, label, cleared),
            tile,
            removal.relocated,
            rng,
            out,
        )
    return written


@dataclass(frozen=True)
class _Variant:
    """One draw of removed buildings of a scene, and the scene with all of them removed."""

    scene: FootprintImage
    name: str
    earlier: NDArray[np.uint8]
    label: NDArray[np.uint8]
    cleared: tuple[NDArray[np.uint8], NDArray[np.bool_]] | None


def _cleared(
    scene: FootprintImage, removal: BuildingRemoval, rng: np.random.Generator
) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """The scene with every building it can remove removed, and where buildings still stand."""
    pixels, removed = remove_buildings(scene, replace(removal, share=1.0), rng)
    return pixels, (scene.buildings > 0) & (removed == 0)


def _other_window(
    height: int, width: int, tile: int, top: int, left: int, rng: np.random.Generator
) -> tuple[int, int]:
    """A tile's corner at least half a tile away from ``(top, left)`` along one axis, where there is room."""
    rows, cols = max(height - tile, 0) + 1, max(width - tile, 0) + 1
    for _ in range(100):
        other = int(rng.integers(0, rows)), int(rng.integers(0, cols))
        if abs(other[0] - top) >= tile // 2 or abs(other[1] - left) >= tile // 2:
            return other
    return other


def _write_tiles(variant: _Variant, tile: int, relocated: float, rng: np.random.Generator, out: Path) -> int:
    """Cut one variant into tiles and write those with change; the number written.

    With chance ``relocated`` a tile's earlier date is another window of the cleared scene, and
    its label every building standing in either date.
    """
    scene = variant.scene
    height, width = variant.label.shape[0], variant.label.shape[1]
    written = 0
    for top in range(0, max(height - tile, 0) + 1, tile):
        for left in range(0, max(width - tile, 0) + 1, tile):
            window = (slice(top, top + tile), slice(left, left + tile))
            earlier, label = variant.earlier[window], variant.label[window]
            if variant.cleared is not None and rng.random() < relocated:
                row, col = _other_window(height, width, tile, top, left, rng)
                elsewhere = (slice(row, row + tile), slice(col, col + tile))
                earlier = variant.cleared[0][elsewhere]
                label = ((scene.buildings[window] > 0) | variant.cleared[1][elsewhere]).astype(np.uint8)
            if not label.any():
                continue
            name = f"{variant.name}_{top:04d}_{left:04d}.png"
            _write_png(earlier, out / "A" / name)
            _write_png(scene.pixels[window], out / "B" / name)
            _write_png(label * np.uint8(255), out / "label" / name)
            written += 1
    return written
