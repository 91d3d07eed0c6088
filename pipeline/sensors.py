"""What the pipeline knows of each sensor, in one table: asset keys, scaling and quality masks.

A :class:`Sensor` says under which asset keys a product publishes each band common name, how its
digital numbers become reflectance (per band ``reflectance = dn * scale + offset``, the product's
published values), and which quality preset masks its clouds, shadows and nodata. Quality presets
are :class:`QualitySpec` values: a quality asset and either a list of invalid *values* (a
classification band such as Sentinel-2's SCL) or invalid *bits* (a bit-packed band such as
Landsat's ``QA_PIXEL``), or both.

Built in:

==================  ==========================================================================
sensor              assets
==================  ==========================================================================
``sentinel-2-l2a``  band ids ``B01`` ... ``B12``, ``B8A`` (Planetary Computer); SCL quality
``landsat-c2-l2``   ``SR_B1`` ... ``SR_B7``, ``ST_B10`` (Planetary Computer); ``QA_PIXEL`` bits
``landsat-bands``   Landsat 8/9 band numbers ``B2`` ... ``B7``; ``QA_PIXEL`` bits
``earth-search``    Earth Search's names (``rededge1``, ``swir1`` ...); SCL quality
==================  ==========================================================================

Other packages add theirs with :func:`register_sensor` and :func:`register_quality_preset`;
:func:`sensor_aliases` merges every registered sensor's keys, in registration order, for
:func:`pipeline.bands.resolve_asset_key`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from pipeline.errors import JobSpecError

__all__ = [
    "LANDSAT_QA_PIXEL_BITS",
    "QualitySpec",
    "Sensor",
    "available_quality_presets",
    "available_sensors",
    "get_sensor",
    "quality_preset",
    "register_quality_preset",
    "register_sensor",
    "sensor_aliases",
]

#: Bits of Landsat Collection 2 ``QA_PIXEL`` (bit 0 is the least significant).
LANDSAT_QA_PIXEL_BITS: Mapping[str, int] = {
    "fill": 0,
    "dilated_cloud": 1,
    "cirrus": 2,
    "cloud": 3,
    "cloud_shadow": 4,
    "snow": 5,
    "clear": 6,
    "water": 7,
}

#: Highest bit a quality mask may test (quality bands are at most 32-bit integers).
_MAX_BIT = 31


class QualitySpec(BaseModel):
    """Which asset flags clouds, shadows and nodata, and which of its values or bits are invalid.

    Given as a preset name (:func:`available_quality_presets`): ``synthetic`` (the generated
    scenes' ``qa`` band: 1 cloud, 2 shadow, 255 nodata), ``s2-scl`` (Sentinel-2 L2A scene
    classification: no data, saturated, shadows, clouds, cirrus), ``landsat-qa-pixel`` (Landsat
    Collection 2 ``QA_PIXEL`` bits: fill, cirrus, cloud, cloud shadow), ``none`` (no quality band;
    only nodata is masked); or as fields.

    Attributes
    ----------
    asset
        The quality asset's key, or None for no quality band.
    invalid_values
        Values of the quality band that mark a pixel invalid.
    invalid_bits
        Bit positions (0 = least significant) of which any one set marks a pixel invalid.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    asset: str | None = "qa"
    invalid_values: tuple[int, ...] = (1, 2, 255)
    invalid_bits: tuple[int, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in _PRESETS:
                raise ValueError(
                    f"quality preset {value!r} is unknown; use one of {list(available_quality_presets())}"
                )
            return _PRESETS[value].model_dump()
        return value

    @field_validator("invalid_bits")
    @classmethod
    def _bits(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        bad = [bit for bit in value if not 0 <= bit <= _MAX_BIT]
        if bad:
            raise ValueError(
                f"invalid_bits {list(bad)} must be bit positions 0..{_MAX_BIT} (0 = least significant), "
                "e.g. [0, 2, 3, 4] for Landsat QA_PIXEL fill, cirrus, cloud and cloud shadow"
            )
        return value

    def invalid(self, quality: Any) -> Any:
        """Mask of the pixels the quality band marks invalid (or that it leaves without a value).

        Parameters
        ----------
        quality
            The quality band's values: a NumPy array, or an ``xarray.DataArray`` (lazily, for
            dask-backed ones). Missing values are NaN.

        Returns
        -------
        numpy.ndarray or xarray.DataArray
            Boolean, of the input's shape: True where the value is NaN, one of
            :attr:`invalid_values`, or has one of :attr:`invalid_bits` set.
        """
        import xarray as xr  # here, not at the top: the CLI refuses a bad job file before xarray loads

        if isinstance(quality, xr.DataArray):
            mask: xr.DataArray = xr.apply_ufunc(
                self._invalid_array, quality, dask="parallelized", output_dtypes=[bool]
            )
            return mask
        return self._invalid_array(np.asarray(quality))

    def _invalid_array(self, values: NDArray[Any]) -> NDArray[np.bool_]:
        floating = np.issubdtype(values.dtype, np.floating)
        missing = np.isnan(values) if floating else np.zeros(values.shape, dtype=bool)
        invalid = missing | np.isin(values, list(self.invalid_values))
        if self.invalid_bits:
            bits = sum(1 << bit for bit in self.invalid_bits)
            whole = np.where(missing, 0, values).astype(np.int64)
            invalid |= (whole & bits) != 0
        return np.asarray(invalid, dtype=bool)


@dataclass(frozen=True)
class Sensor:
    """What the pipeline knows of one sensor's products.

    Attributes
    ----------
    name
        Registry name.
    aliases
        Asset keys under which the product publishes each band common name (in order of preference).
    scaling
        ``(scale, offset)`` per common name that turns the product's digital numbers into
        reflectance (or the band's physical unit), as the product publishes it; items whose
        ``raster:bands`` carry their own values use those.
    quality
        Name of the quality preset that masks the product's clouds, shadows and nodata.
    """

    name: str
    aliases: Mapping[str, tuple[str, ...]]
    scaling: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    quality: str = "none"

    def __post_init__(self) -> None:
        if self.quality not in _PRESETS:
            raise JobSpecError(
                f"sensor {self.name!r} names quality preset {self.quality!r}, which is unknown; register it "
                f"first with register_quality_preset (known: {', '.join(available_quality_presets())})"
            )


_PRESETS: dict[str, QualitySpec] = {}
_SENSORS: dict[str, Sensor] = {}

T = TypeVar("T")


def _register(table: dict[str, T], what: str, name: str, value: T) -> None:
    if name in table and table[name] != value:
        raise JobSpecError(
            f"a {what} named {name!r} is already registered (known: {', '.join(sorted(table))}); "
            "choose another name"
        )
    table[name] = value


def register_quality_preset(name: str, preset: QualitySpec) -> None:
    """Make ``preset`` available as ``quality: name`` in jobs.

    Raises
    ------
    JobSpecError
        When another preset already has that name.
    """
    _register(_PRESETS, "quality preset", name, preset)


def available_quality_presets() -> tuple[str, ...]:
    """Registered quality preset names, sorted."""
    return tuple(sorted(_PRESETS))


def quality_preset(name: str) -> QualitySpec:
    """The quality preset registered under ``name``.

    Raises
    ------
    JobSpecError
        When no preset has that name (the message lists the known ones).
    """
    try:
        return _PRESETS[name]
    except KeyError:
        raise JobSpecError(
            f"quality preset {name!r} is unknown; use one of {', '.join(available_quality_presets())}"
        ) from None


def register_sensor(sensor: Sensor) -> Sensor:
    """Add a sensor to the table (its asset keys then resolve band common names).

    Raises
    ------
    JobSpecError
        When another sensor already has that name.
    """
    _register(_SENSORS, "sensor", sensor.name, sensor)
    return sensor


def available_sensors() -> tuple[str, ...]:
    """Registered sensor names, in registration order."""
    return tuple(_SENSORS)


def get_sensor(name: str) -> Sensor:
    """The sensor registered under ``name``.

    Raises
    ------
    JobSpecError
        When no sensor has that name (the message lists the known ones).
    """
    try:
        return _SENSORS[name]
    except KeyError:
        raise JobSpecError(
            f"unknown sensor {name!r}; known sensors: {', '.join(available_sensors())}"
        ) from None


def sensor_aliases() -> dict[str, tuple[str, ...]]:
    """Asset keys of each common name over every registered sensor, in registration order, once each."""
    merged: dict[str, tuple[str, ...]] = {}
    for sensor in _SENSORS.values():
        for name, keys in sensor.aliases.items():
            known = merged.get(name, ())
            merged[name] = known + tuple(key for key in keys if key not in known)
    return merged


register_quality_preset("synthetic", QualitySpec(asset="qa", invalid_values=(1, 2, 255)))
register_quality_preset("s2-scl", QualitySpec(asset="scl", invalid_values=(0, 1, 3, 8, 9, 10)))
register_quality_preset(
    "landsat-qa-pixel",
    QualitySpec(
        asset="qa_pixel",
        invalid_values=(),
        invalid_bits=tuple(
            LANDSAT_QA_PIXEL_BITS[flag] for flag in ("fill", "cirrus", "cloud", "cloud_shadow")
        ),
    ),
)
register_quality_preset("none", QualitySpec(asset=None, invalid_values=()))

_S2_IDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
_S2_NAMES = (
    "coastal",
    "blue",
    "green",
    "red",
    "rededge071",
    "rededge075",
    "rededge078",
    "nir",
    "nir08",
    "nir09",
    "cirrus",
    "swir16",
    "swir22",
)
register_sensor(
    Sensor(
        "sentinel-2-l2a",
        {name: (key,) for name, key in zip(_S2_NAMES, _S2_IDS, strict=True)},
        {name: (1e-4, 0.0) for name in _S2_NAMES},  # baseline 04.00+ items carry offset -0.1 themselves
        "s2-scl",
    )
)
_LANDSAT_SR = {"coastal": 1, "blue": 2, "green": 3, "red": 4, "nir": 5, "swir16": 6, "swir22": 7}
register_sensor(
    Sensor(
        "landsat-c2-l2",
        {**{name: (f"SR_B{band}",) for name, band in _LANDSAT_SR.items()}, "lwir11": ("ST_B10",)},
        {**{name: (2.75e-5, -0.2) for name in _LANDSAT_SR}, "lwir11": (0.00341802, 149.0)},
        "landsat-qa-pixel",
    )
)
register_sensor(
    Sensor(
        "landsat-bands",
        {name: (f"B{band}",) for name, band in _LANDSAT_SR.items() if band > 1},
        quality="landsat-qa-pixel",
    )
)
register_sensor(
    Sensor(
        "earth-search",
        {
            **{name: (name,) for name in ("coastal", "blue", "green", "red", "nir", "nir08", "nir09")},
            "rededge071": ("rededge1",),
            "rededge075": ("rededge2",),
            "rededge078": ("rededge3",),
            "cirrus": ("cirrus",),
            "swir16": ("swir16", "swir1"),
            "swir22": ("swir22", "swir2"),
            "lwir11": ("lwir11", "lwir"),
        },
        quality="s2-scl",
    )
)
