"""Clouds, cloud shadows, sensor noise and the quality band of each acquisition.

Every acquisition sees the surface of its epoch through its own seeded clouds:

- *cumulus*: small puffs (radius 2-5 px), at most one per 48 px cell, present in 56 % of the
  cells: about 1 % cover and never more than ~5 % in any cell. They are the only clouds of the
  epoch's mostly clear acquisition;
- *cloud systems*: thresholded fractal noise (~64 px features) covering the rest of the
  acquisition's cloud fraction.

Clouds are bright in every band; their edges are thinner (mixed with the surface). Each cloud
casts a shadow displaced by the fixed vector :data:`SHADOW_OFFSET` (the sun in the south-east, as
for a morning overpass over Europe); shadowed pixels keep 35 % of their reflectance.

The quality band ``qa`` (``uint8``) is a much simplified Sentinel-2 SCL: :class:`QA` codes
``0`` clear, ``1`` cloud, ``2`` cloud shadow, ``255`` nodata (a cloud over a shadow is a cloud).

Hand-written like the rest of the generator so that an acquisition's window is a pure function of
global pixel coordinates (see :mod:`pipeline.synthetic.noise`).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
from numpy.typing import NDArray
from rasterio.windows import Window

from pipeline.errors import SceneError
from pipeline.synthetic.noise import fbm, fbm_quantile, hash_grid, mix, uniform_grid, value_noise
from pipeline.synthetic.spec import MOSTLY_CLEAR_FRACTION, Acquisition, SceneSpec, window_coords
from pipeline.synthetic.spectra import BAND_NAMES, encode, surface_reflectance

__all__ = [
    "CLOUD_REFLECTANCE",
    "QA",
    "QA_NODATA",
    "SHADOW_OFFSET",
    "acquisition_window",
    "cloud_cover",
]

#: ``(rows, columns)`` from a cloud to its shadow: north-west, as for a south-eastern sun.
SHADOW_OFFSET = (-20, -14)
#: Reflectance of a thick cloud, in band order.
CLOUD_REFLECTANCE: tuple[float, ...] = (0.45, 0.45, 0.46, 0.50, 0.38, 0.28)
_SHADOW_FACTOR = 0.35
_CUMULUS_CELL, _CUMULUS_MIN, _CUMULUS_MAX = 48, 2.0, 5.0
_CUMULUS_PROBABILITY = 0.56
_SYSTEM_SCALE, _SYSTEM_OCTAVES, _SYSTEM_EDGE = 64.0, 4, 0.05
_SENSOR_NOISE = 0.03
_GAIN = 0.04


class QA(IntEnum):
    """Codes of the ``qa`` band."""

    CLEAR = 0
    CLOUD = 1
    SHADOW = 2
    NODATA = 255


QA_NODATA = int(QA.NODATA)
_CLOUD = np.array(CLOUD_REFLECTANCE, dtype=np.float32)[:, None, None]


def _cumulus(
    rows: NDArray[np.int64], cols: NDArray[np.int64], salt: int, probability: float
) -> NDArray[np.float32]:
    """Thickness in ``[0, 1]`` of cumulus puffs (0 outside them), one per cell with ``probability``."""
    cy, cx = rows // _CUMULUS_CELL, cols // _CUMULUS_CELL
    y0, x0 = int(cy.min()), int(cx.min())
    h = hash_grid(
        np.arange(y0, int(cy.max()) + 1, dtype=np.int64),
        np.arange(x0, int(cx.max()) + 1, dtype=np.int64),
        salt,
    )
    present = (h >> np.uint64(54)).astype(np.float32) / np.float32(1 << 10) < probability
    size = ((h >> np.uint64(40)) & np.uint64(1023)).astype(np.float32) / np.float32(1023)
    radius_t = np.where(present, _CUMULUS_MIN + (_CUMULUS_MAX - _CUMULUS_MIN) * size, 0).astype(np.float32)
    margin = int(np.ceil(_CUMULUS_MAX * 1.2)) + 1
    span = _CUMULUS_CELL - 2 * margin
    oy_t = (margin + (h >> np.uint64(20)) % np.uint64(span)).astype(np.int32)
    ox_t = (margin + h % np.uint64(span)).astype(np.int32)
    index = ((cy - y0)[:, None], (cx - x0)[None, :])
    radius = radius_t[index]
    dy = (rows - cy * _CUMULUS_CELL).astype(np.int32)[:, None] - oy_t[index]
    dx = (cols - cx * _CUMULUS_CELL).astype(np.int32)[None, :] - ox_t[index]
    dist = np.sqrt((dy * dy + dx * dx).astype(np.float32))
    dist /= np.float32(0.8) + np.float32(0.4) * value_noise(rows, cols, 4.0, mix(salt, "edge"))
    # Cells without a puff have radius 0: their division result is discarded.
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (dist / radius).astype(np.float32, copy=False)
    thickness = np.float32(2) * (np.float32(1) - ratio)
    thickness[radius <= 0] = 0
    np.clip(thickness, 0, 1, out=thickness)
    return thickness


def _clouds(
    rows: NDArray[np.int64], cols: NDArray[np.int64], acquisition: Acquisition
) -> NDArray[np.float32]:
    """Cloud thickness in ``[0, 1]``; a pixel is cloudy where it is positive."""
    share = min(1.0, acquisition.cloud_fraction / MOSTLY_CLEAR_FRACTION)
    thickness = _cumulus(rows, cols, mix(acquisition.salt, "cumulus"), _CUMULUS_PROBABILITY * share)
    system = acquisition.cloud_fraction - MOSTLY_CLEAR_FRACTION
    if not acquisition.mostly_clear and system > 0:
        field = fbm(rows, cols, _SYSTEM_SCALE, mix(acquisition.salt, "system"), _SYSTEM_OCTAVES)
        threshold = fbm_quantile(1 - system, _SYSTEM_OCTAVES)
        edge = np.where(field > threshold, (field - np.float32(threshold)) / np.float32(_SYSTEM_EDGE), 0)
        np.maximum(thickness, np.minimum(edge, 1).astype(np.float32), out=thickness)
    return thickness


def acquisition_window(
    spec: SceneSpec,
    acquisition: Acquisition,
    window: Window,
    surface: NDArray[np.float32] | None = None,
) -> dict[str, NDArray[np.uint16] | NDArray[np.uint8]]:
    """The pixels of one acquisition for a window: every band's DN and the ``qa`` band.

    Parameters
    ----------
    spec
        The scene.
    acquisition
        One of :func:`~pipeline.synthetic.spec.acquisitions` ``(spec)``.
    window
        Integer window inside the scene.
    surface
        The window's :func:`~pipeline.synthetic.spectra.surface_reflectance` for the
        acquisition's epoch, if already computed (it is shared by the epoch's acquisitions).

    Returns
    -------
    dict
        ``{"blue": uint16, ..., "swir22": uint16, "qa": uint8}``, each ``(height, width)``.
        DN as in :func:`~pipeline.synthetic.spectra.encode`; ``qa`` holds :class:`QA` codes.
    """
    rows, cols = window_coords(spec, window)
    height, width = rows.size, cols.size
    if surface is None:
        surface = surface_reflectance(spec, window, acquisition.epoch)
    elif surface.shape != (len(BAND_NAMES), height, width):
        raise SceneError(
            f"surface has shape {surface.shape}, the window needs {(len(BAND_NAMES), height, width)}: "
            "pass surface_reflectance() of the same window, or None"
        )
    reflectance = surface.copy()
    qa = np.zeros((height, width), dtype=np.uint8)
    if acquisition.cloud_fraction > 0:
        # One cloud field over the window and the area its shadows come from.
        sy, sx = SHADOW_OFFSET
        top, left = min(0, -sy), min(0, -sx)
        ext_rows = np.arange(rows[0] + top, rows[-1] + 1 + max(0, -sy), dtype=np.int64)
        ext_cols = np.arange(cols[0] + left, cols[-1] + 1 + max(0, -sx), dtype=np.int64)
        field = _clouds(ext_rows, ext_cols, acquisition)
        thickness = field[-top : -top + height, -left : -left + width]
        caster = field[-top - sy : -top - sy + height, -left - sx : -left - sx + width]
        cloud = thickness > 0
        shadow = (caster > 0) & ~cloud
        qa[shadow] = QA.SHADOW
        qa[cloud] = QA.CLOUD
        reflectance[:, shadow] *= np.float32(_SHADOW_FACTOR)
        alpha = np.float32(0.55) + np.float32(0.45) * thickness[cloud]
        bright = _CLOUD[:, :, 0] * (
            np.float32(0.9) + np.float32(0.2) * _cloud_texture(rows, cols, acquisition)[cloud]
        )
        reflectance[:, cloud] = reflectance[:, cloud] * (np.float32(1) - alpha) + bright * alpha
    gain = np.float32(1 + _GAIN * (mix(acquisition.salt, "gain") / 2.0**64 - 0.5))
    reflectance *= gain
    out: dict[str, NDArray[np.uint16] | NDArray[np.uint8]] = {}
    for i, name in enumerate(BAND_NAMES):
        noise = uniform_grid(rows, cols, mix(acquisition.salt, "sensor", i)).astype(np.float32)
        noise *= np.float32(_SENSOR_NOISE)
        noise += np.float32(1 - _SENSOR_NOISE / 2)
        out[name] = encode(reflectance[i] * noise)
    out["qa"] = qa
    return out


def _cloud_texture(
    rows: NDArray[np.int64], cols: NDArray[np.int64], acquisition: Acquisition
) -> NDArray[np.float32]:
    """Brightness texture of the clouds of an acquisition, in ``[0, 1]``."""
    return fbm(rows, cols, 16.0, mix(acquisition.salt, "cloud-texture"), 2)


def cloud_cover(qa: NDArray[np.uint8]) -> tuple[int, int, int]:
    """Counts of cloud, shadow and valid pixels in a ``qa`` array.

    Parameters
    ----------
    qa
        :class:`QA` codes.

    Returns
    -------
    cloud, shadow, valid
        Pixel counts; ``eo:cloud_cover`` is ``100 * cloud / valid``.
    """
    counts = np.bincount(qa.ravel(), minlength=256)
    return int(counts[QA.CLOUD]), int(counts[QA.SHADOW]), int(qa.size - counts[QA.NODATA])
