"""Input-scale check: are these raw values on the scale a model was made for?

A model normalises raw values with ``x * scale`` (:class:`~seg2change_core.change_model.
InputNormalisation`): ``1/255`` for 8-bit imagery, ``1e-4`` for 16-bit digital numbers
(Sentinel-2/Landsat DN = reflectance x 10000), ``1`` for reflectance. Given values of another
scale it still runs, and silently scores nonsense (an 8-bit RGB model fed Sentinel-2 DN sees
values 40 times its training range). :func:`check_input_scale` refuses that.

Classes of raw input (:func:`classify_input_scale`), from the dtype and the 99.9th percentile
``high`` of the finite values (robust to a few saturated pixels):

* ``"8-bit"``: ``uint8``, or whole numbers with ``high <= 255`` (and above 1.5);
* ``"reflectance"``: floats with ``high <= 1.5`` (up to 3 is accepted as bright reflectance, with
  a warning);
* ``"16-bit DN"``: ``high > 255`` (``uint16`` digital numbers reach ~10000 and more);
* ``"unknown"``: anything else (e.g. non-integer values between 3 and 255), warned about, never
  refused.

Borderline readings are warned about (:class:`InputScaleWarning`): ``uint16`` data whose values all
lie in 0..255 (8-bit data in a 16-bit container, or a very dark scene), reflectance up to 3.

The scale a model expects (:func:`expected_input_scale`) comes from its normalisation: ``scale``
close to ``1/255`` means 8-bit, ``scale <= 1e-3`` 16-bit DN; with ``scale`` about 1 the typical raw
value ``(mean + 3 std) / scale`` decides (up to 3: reflectance; up to 300: 8-bit; beyond: DN).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import ArrayLike

from seg2change_core.errors import DatasetError

if TYPE_CHECKING:
    from seg2change_core.change_model import InputNormalisation

__all__ = [
    "InputScale",
    "InputScaleKind",
    "InputScaleWarning",
    "check_input_scale",
    "classify_input_scale",
    "expected_input_scale",
]

InputScaleKind = Literal["8-bit", "reflectance", "16-bit DN", "unknown"]

_REFLECTANCE_HIGH = 1.5
_REFLECTANCE_BORDER = 3.0
_BYTE_HIGH = 255.0
_DESCRIPTION: dict[str, str] = {
    "8-bit": "8-bit values (0..255)",
    "reflectance": "reflectance (about 0..1)",
    "16-bit DN": "16-bit digital numbers (e.g. Sentinel-2 DN, reflectance x 10000)",
    "unknown": "values of no known scale",
}


class InputScaleWarning(UserWarning):
    """Raw input whose scale is borderline or unknown (not refused, but worth checking)."""


@dataclass(frozen=True)
class InputScale:
    """How raw input values were classified.

    Attributes
    ----------
    kind
        ``"8-bit"``, ``"reflectance"``, ``"16-bit DN"`` or ``"unknown"``.
    high
        99.9th percentile of the finite values.
    dtype
        Name of the values' dtype.
    borderline
        Why the reading is uncertain, or ``""``.
    """

    kind: InputScaleKind
    high: float
    dtype: str
    borderline: str = ""

    def describe(self) -> str:
        """E.g. ``16-bit digital numbers (...) (uint16, 99.9th percentile 3012)``."""
        return f"{_DESCRIPTION[self.kind]} ({self.dtype}, 99.9th percentile {self.high:.4g})"


def classify_input_scale(values: ArrayLike) -> InputScale:
    """Classify raw input values (see the module docstring).

    Parameters
    ----------
    values
        A sample of raw values of any shape, in their own dtype (a ``uint16`` array is read as
        16-bit even where its values are small).

    Returns
    -------
    InputScale
    """
    array = np.asarray(values)
    dtype = array.dtype
    flat = array.reshape(-1)
    if dtype.kind == "f":
        flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return InputScale("unknown", float("nan"), dtype.name, "no finite values to judge")
    high = float(np.percentile(flat.astype(np.float64, copy=False), 99.9))
    if dtype == np.uint8:
        return InputScale("8-bit", high, dtype.name)
    integral = dtype.kind in "uib" or bool(np.array_equal(flat, np.round(flat)))
    if high > _BYTE_HIGH:
        return InputScale("16-bit DN", high, dtype.name)
    if dtype.kind in "ui" and dtype.itemsize >= 2:
        return InputScale(
            "8-bit",
            high,
            dtype.name,
            f"{dtype.name} values all lie in 0..255: read as 8-bit data (or a very dark 16-bit scene)",
        )
    if high <= _REFLECTANCE_HIGH:
        return InputScale("reflectance", high, dtype.name)
    if integral:
        return InputScale("8-bit", high, dtype.name)
    if high <= _REFLECTANCE_BORDER:
        return InputScale(
            "reflectance", high, dtype.name, f"reflectance up to {high:.3g} (bright surfaces or clouds?)"
        )
    return InputScale("unknown", high, dtype.name, "non-integer values between 3 and 255")


def expected_input_scale(normalisation: InputNormalisation) -> InputScaleKind:
    """The raw input scale a model's normalisation was made for (see the module docstring)."""
    scale = normalisation.scale
    if abs(scale * 255.0 - 1.0) < 0.05:
        return "8-bit"
    if scale <= 1e-3:
        return "16-bit DN"
    typical = max((m + 3 * s) for m, s in zip(normalisation.mean, normalisation.std, strict=True)) / scale
    if typical <= _REFLECTANCE_BORDER:
        return "reflectance"
    if typical <= 300:
        return "8-bit"
    return "16-bit DN"


def check_input_scale(
    values_sample: ArrayLike, normalisation: InputNormalisation, *, where: str = "the input"
) -> InputScale:
    """Refuse raw input of another scale than the model expects; warn when borderline.

    Parameters
    ----------
    values_sample
        Raw values (a few images, or a sample of them) in their own dtype.
    normalisation
        The model's input normalisation.
    where
        What the values are (e.g. a dataset name), for messages.

    Returns
    -------
    InputScale
        The classification of the values.

    Raises
    ------
    DatasetError
        When the values are clearly of another scale (8-bit, reflectance, 16-bit DN) than the
        model expects, naming both.

    Warns
    -----
    InputScaleWarning
        When the reading is borderline or unknown.
    """
    found = classify_input_scale(values_sample)
    expected = expected_input_scale(normalisation)
    if found.kind == "unknown":
        warnings.warn(
            f"cannot tell the value scale of {where}: {found.describe()}, {found.borderline}; the model "
            f"expects {_DESCRIPTION[expected]}",
            InputScaleWarning,
            stacklevel=2,
        )
        return found
    if found.kind != expected:
        message = (
            f"{where} holds {found.describe()}, but the model expects {_DESCRIPTION[expected]} "
            f"(its normalisation scale is {normalisation.scale:.6g}); its scores would be meaningless. "
            "Use a model trained on data of this scale, or convert the data"
        )
        if found.borderline:
            warnings.warn(f"{message} ({found.borderline})", InputScaleWarning, stacklevel=2)
            return found
        raise DatasetError(message)
    if found.borderline:
        warnings.warn(f"{where}: {found.borderline}", InputScaleWarning, stacklevel=2)
    return found
