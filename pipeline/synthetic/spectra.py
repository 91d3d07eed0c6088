"""Spectral bands, per-class surface reflectance and its encoding as Sentinel-2-like integers.

Bands are the six 10/20 m Sentinel-2 MSI bands that the usual indices need, named by their STAC
common names (the asset keys) with the Sentinel-2 band names alongside:

=========  ====  ==================  ========
name       S2    centre (um)         FWHM (um)
=========  ====  ==================  ========
blue       B02   0.490               0.098
green      B03   0.560               0.045
red        B04   0.665               0.038
nir        B08   0.842               0.145
swir16     B11   1.610               0.143
swir22     B12   2.190               0.242
=========  ====  ==================  ========

Surface reflectance is stored as ``uint16`` digital numbers with ``reflectance = DN * 0.0001 + 0``
(:data:`SCALE`, :data:`OFFSET`), like Sentinel-2 L2A before processing baseline 04.00 (which
added an offset of -0.1); DN ``0`` is nodata and never occurs inside a scene.

The class signatures are hand-set typical values (not a spectral library, none is installed)
chosen so that the common indices behave as in real imagery: water has high NDWI and MNDWI,
forest, grass and growing crops high NDVI, buildings and bare soil positive NDBI and BSI and are
bright, burned land has a strongly negative NBR. Pixels get a deterministic texture: smooth
brightness variation (~24 px) and per-pixel speckle, both shared by the two epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from rasterio.windows import Window

from pipeline.synthetic.landscape import LandCover, Landscape, landscape_window
from pipeline.synthetic.noise import fbm, mix, uniform_grid
from pipeline.synthetic.spec import Epoch, SceneSpec, window_coords

__all__ = [
    "BANDS",
    "BAND_NAMES",
    "NODATA",
    "OFFSET",
    "SCALE",
    "SIGNATURES",
    "Band",
    "decode",
    "encode",
    "surface_reflectance",
]

#: Multiply a DN by this to get reflectance.
SCALE = 0.0001
#: Add this after scaling.
OFFSET = 0.0
#: DN of pixels without data.
NODATA = 0


@dataclass(frozen=True)
class Band:
    """One spectral band.

    Attributes
    ----------
    name
        STAC common name, also the asset key (``"blue"``, ..., ``"swir22"``).
    s2_name
        Sentinel-2 band name (``"B02"``, ...).
    center_wavelength, full_width_half_max
        In micrometres, as in STAC ``eo:bands``.
    resolution
        Native Sentinel-2 resolution in metres (the synthetic scene uses one grid for all).
    """

    name: str
    s2_name: str
    center_wavelength: float
    full_width_half_max: float
    resolution: int


BANDS: tuple[Band, ...] = (
    Band("blue", "B02", 0.49, 0.098, 10),
    Band("green", "B03", 0.56, 0.045, 10),
    Band("red", "B04", 0.665, 0.038, 10),
    Band("nir", "B08", 0.842, 0.145, 10),
    Band("swir16", "B11", 1.61, 0.143, 20),
    Band("swir22", "B12", 2.19, 0.242, 20),
)
BAND_NAMES: tuple[str, ...] = tuple(b.name for b in BANDS)

#: Surface reflectance per class, in :data:`BANDS` order. Cropland is the fully grown crop; a
#: parcel's vigour mixes it with :data:`PLOUGHED_SOIL`.
SIGNATURES: dict[LandCover, tuple[float, float, float, float, float, float]] = {
    LandCover.NODATA: (0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    LandCover.WATER: (0.060, 0.070, 0.040, 0.020, 0.012, 0.008),
    LandCover.FOREST: (0.025, 0.045, 0.025, 0.320, 0.150, 0.065),
    LandCover.GRASS: (0.035, 0.075, 0.045, 0.340, 0.220, 0.110),
    LandCover.CROPLAND: (0.030, 0.070, 0.040, 0.420, 0.210, 0.100),
    LandCover.BARE_SOIL: (0.100, 0.140, 0.190, 0.250, 0.340, 0.280),
    LandCover.ROAD: (0.080, 0.090, 0.100, 0.120, 0.140, 0.130),
    LandCover.BUILDING: (0.150, 0.170, 0.200, 0.240, 0.310, 0.280),
    LandCover.BURNED: (0.035, 0.045, 0.055, 0.085, 0.170, 0.190),
}
PLOUGHED_SOIL: tuple[float, ...] = (0.070, 0.100, 0.140, 0.210, 0.290, 0.230)

_TABLE = np.array([SIGNATURES[c] for c in LandCover], dtype=np.float32)
_SOIL = np.array(PLOUGHED_SOIL, dtype=np.float32)
_SMOOTH_TEXTURE = 0.12
_FINE_TEXTURE = 0.06


def surface_reflectance(
    spec: SceneSpec, window: Window, epoch: Epoch, landscape: Landscape | None = None
) -> NDArray[np.float32]:
    """Cloud-free surface reflectance of one epoch for a window.

    Parameters
    ----------
    spec
        The scene.
    window
        Integer window inside the scene.
    epoch
        ``"before"`` or ``"after"``.
    landscape
        The window's :class:`~pipeline.synthetic.landscape.Landscape` if already computed.

    Returns
    -------
    numpy.ndarray
        ``float32`` reflectance, shape ``(len(BANDS), height, width)``.
    """
    epoch = Epoch(epoch)
    rows, cols = window_coords(spec, window)
    land = landscape if landscape is not None else landscape_window(spec, window)
    classes = land.classes(epoch)
    brightness = np.float32(1 - _SMOOTH_TEXTURE / 2) + np.float32(_SMOOTH_TEXTURE) * fbm(
        rows, cols, 24.0, mix(spec.seed, "texture-smooth"), 2
    )
    speckle = uniform_grid(rows, cols, mix(spec.seed, "texture-fine")).astype(np.float32)
    brightness *= np.float32(1 - _FINE_TEXTURE / 2) + np.float32(_FINE_TEXTURE) * speckle
    crop = classes == LandCover.CROPLAND
    vigour = land.vigour(epoch)[crop]
    out = np.empty((len(BANDS), rows.size, cols.size), dtype=np.float32)
    for i in range(len(BANDS)):
        band = _TABLE[classes, i]
        band[crop] = _SOIL[i] + vigour * (_TABLE[LandCover.CROPLAND, i] - _SOIL[i])
        np.multiply(band, brightness, out=out[i])
    return out


def encode(reflectance: NDArray[np.float32]) -> NDArray[np.uint16]:
    """Reflectance to DN (``round(r / SCALE)``, clipped to ``1..65535`` so 0 stays nodata)."""
    dn = np.rint(reflectance * np.float32(1 / SCALE))
    encoded: NDArray[np.uint16] = np.clip(dn, 1, 65535).astype(np.uint16)
    return encoded


def decode(dn: NDArray[np.uint16]) -> NDArray[np.float32]:
    """DN to reflectance; nodata (0) becomes NaN."""
    out = dn.astype(np.float32) * np.float32(SCALE) + np.float32(OFFSET)
    out[dn == NODATA] = np.nan
    return out
