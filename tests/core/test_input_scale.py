"""Input-scale check: 8-bit, reflectance and 16-bit DN are told apart, and a mismatch is refused."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from seg2change_core.change_model import InputNormalisation
from seg2change_core.datasets import (
    InputScaleWarning,
    check_input_scale,
    classify_input_scale,
    expected_input_scale,
)
from seg2change_core.errors import DatasetError

RNG = np.random.default_rng(0)
BYTES = RNG.integers(0, 256, (3, 32, 32), dtype=np.uint8)
DN = RNG.integers(300, 6000, (13, 32, 32)).astype(np.uint16)
REFLECTANCE = (RNG.random((4, 32, 32)) * 0.6).astype(np.float32)
RGB_MODEL = InputNormalisation.imagenet_rgb(1 / 255)
DN_MODEL = InputNormalisation(("red", "green"), (0.1, 0.1), (0.05, 0.05), 1e-4)
REFLECTANCE_MODEL = InputNormalisation(("red", "nir"), (0.1, 0.25), (0.05, 0.1), 1.0)


def test_classification() -> None:
    assert classify_input_scale(BYTES).kind == "8-bit"
    assert classify_input_scale(DN).kind == "16-bit DN"
    assert classify_input_scale(REFLECTANCE).kind == "reflectance"
    assert classify_input_scale(BYTES.astype(np.float32)).kind == "8-bit"  # whole-number floats
    assert classify_input_scale(DN.astype(np.float32)).kind == "16-bit DN"
    small = classify_input_scale(BYTES.astype(np.uint16))
    assert small.kind == "8-bit" and "0..255" in small.borderline
    bright = classify_input_scale(REFLECTANCE * 4)
    assert bright.kind == "reflectance" and bright.borderline
    assert classify_input_scale(REFLECTANCE * 100).kind == "unknown"
    with_nan = REFLECTANCE.copy()
    with_nan[0] = np.nan
    assert classify_input_scale(with_nan).kind == "reflectance"


def test_what_models_expect() -> None:
    assert expected_input_scale(RGB_MODEL) == "8-bit"
    assert expected_input_scale(DN_MODEL) == "16-bit DN"
    assert expected_input_scale(REFLECTANCE_MODEL) == "reflectance"
    float_bytes = InputNormalisation(("r",), (120.0,), (50.0,), 1.0)
    assert expected_input_scale(float_bytes) == "8-bit"


@pytest.mark.parametrize(
    ("values", "model", "found", "expects"),
    [
        (DN, RGB_MODEL, "16-bit digital numbers", "8-bit values"),
        (REFLECTANCE, RGB_MODEL, "reflectance", "8-bit values"),
        (BYTES, DN_MODEL, "8-bit values", "16-bit digital numbers"),
        (BYTES, REFLECTANCE_MODEL, "8-bit values", "reflectance"),
        (DN, REFLECTANCE_MODEL, "16-bit digital numbers", "reflectance"),
    ],
)
def test_mismatch_is_refused_naming_both(
    values: np.ndarray, model: InputNormalisation, found: str, expects: str
) -> None:
    with pytest.raises(DatasetError) as info:
        check_input_scale(values, model, where="dataset x")
    message = str(info.value)
    assert message.startswith(f"dataset x holds {found}") and f"the model expects {expects}" in message


def test_matches_pass_and_borderline_warns() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_input_scale(BYTES, RGB_MODEL).kind == "8-bit"
        assert check_input_scale(DN, DN_MODEL).kind == "16-bit DN"
        assert check_input_scale(REFLECTANCE, REFLECTANCE_MODEL).kind == "reflectance"
    with pytest.warns(InputScaleWarning, match="0..255"):
        check_input_scale(BYTES.astype(np.uint16), RGB_MODEL)
    with pytest.warns(InputScaleWarning, match="very dark"):
        check_input_scale(BYTES.astype(np.uint16), DN_MODEL)  # borderline: warned, not refused
    with pytest.warns(InputScaleWarning, match="cannot tell"):
        check_input_scale(REFLECTANCE * 100, RGB_MODEL)
