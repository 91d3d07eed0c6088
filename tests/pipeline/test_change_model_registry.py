"""A change model registered from this test module alone runs a job; the registry's errors.

The toy model is real: the probability of change is ``tanh(gain * |mean(after) - mean(before)|)``
per pixel, the mean taken over the bands. Being per pixel, the blended engine output must equal
the toy applied to the whole input at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from engine_inputs import BANDS, engine_job, patch_reflectance, run_small_engine, write_reflectance_cube

from pipeline.errors import JobSpecError
from pipeline.models import change_model_info, model_identities
from seg2change_core.change_kinds import (
    ChangeModelKind,
    available_change_models,
    get_change_model_kind,
    register_change_model,
)
from seg2change_core.change_model import ChangeModel, InputNormalisation
from seg2change_core.checkpoints import load_change_model, save_change_model
from seg2change_core.conformance import ChangeModelConformance
from seg2change_core.errors import CheckpointError, ModelError

GAIN = 8.0


class BandMeanDifference:
    """Per-pixel absolute difference of the band means, squashed to a probability."""

    tile_size: int | None = None

    def __init__(self, bands: tuple[str, ...], gain: float) -> None:
        self.name = f"band-mean-difference-{gain:g}"
        self.normalisation = InputNormalisation(bands, (0.0,) * len(bands), (1.0,) * len(bands))
        self.gain = gain

    @property
    def bands(self) -> tuple[str, ...]:
        return self.normalisation.bands

    @property
    def in_channels(self) -> int:
        return len(self.bands)

    def predict(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        if before.shape != after.shape or before.dim() != 4 or before.shape[1] != self.in_channels:
            raise ModelError(
                f"{self.name} needs two (B, {self.in_channels}, H, W) batches of one shape, got "
                f"{tuple(before.shape)} and {tuple(after.shape)}; select the bands {', '.join(self.bands)}"
            )
        # the normalisation is the identity on finite values and makes nodata 0
        before, after = self.normalisation.apply(before), self.normalisation.apply(after)
        difference = after.mean(dim=1, keepdim=True) - before.mean(dim=1, keepdim=True)
        return torch.tanh(self.gain * difference.abs())


@register_change_model("test-band-mean-difference")
def band_mean_difference(bands: tuple[str, ...], *, gain: float = 1.0) -> ChangeModel:
    return BandMeanDifference(bands, gain)


class TestBandMeanDifferenceConformance(ChangeModelConformance):
    """The toy passes the kit every change model passes."""

    def make_model(self) -> ChangeModel:
        return get_change_model_kind("test-band-mean-difference").build(
            ("red", "nir", "swir16"), {"gain": 4.0}
        )


def toy_probability(refl: np.ndarray, gain: float) -> np.ndarray:
    """The toy's own computation on a whole ``(epoch, band, y, x)`` array, in float64."""
    means = refl.astype(np.float64).mean(axis=1)
    return np.tanh(gain * np.abs(means[1] - means[0]))


def test_a_registered_change_model_runs_a_job(tmp_path: Path) -> None:
    refl = patch_reflectance(200, 170, seed=3, change_fraction=0.3, gaps=[(1, slice(40, 60), slice(10, 50))])
    cube = write_reflectance_cube(tmp_path / "cube.zarr", refl, chunk=128)
    job = engine_job(
        tmp_path / "out",
        bands=BANDS,
        models={"change_model": "test-band-mean-difference", "change_options": {"gain": GAIN}},
    )
    info = change_model_info(job.models, BANDS)
    assert (info.name, info.bands, info.needs_fit) == (f"band-mean-difference-{GAIN:g}", BANDS, False)
    change, _ = model_identities(job.models, BANDS)
    assert change.source == "registered kind test-band-mean-difference"

    out = tmp_path / "change.zarr"
    run_small_engine(job, cube, out)
    probability = np.asarray(zarr.open_array(str(out), path="change_probability", mode="r")[...])
    decision = np.asarray(zarr.open_array(str(out), path="change", mode="r")[...])

    expected = toy_probability(refl, GAIN)
    invalid = ~np.isfinite(refl).all(axis=(0, 1))
    assert invalid.any() and (~invalid).any()
    assert np.isnan(probability[invalid]).all()
    np.testing.assert_allclose(probability[~invalid], expected[~invalid], rtol=0, atol=1e-6)
    assert 0.05 < (expected[~invalid] > 0.5).mean() < 0.95  # the toy sees real change and no change
    np.testing.assert_array_equal(decision[~invalid], (probability[~invalid] > 0.5).astype(np.uint8))


def test_registering_a_taken_name_again_names_the_known_kinds() -> None:
    with pytest.raises(ModelError, match="already registered") as err:
        register_change_model("test-band-mean-difference")(lambda bands: BandMeanDifference(bands, 1.0))
    assert "cach, cva-baseline" in str(err.value)
    with pytest.raises(ModelError, match="'cva-baseline' is already registered"):

        @register_change_model("cva-baseline")
        class Other(ChangeModelKind):
            pass

    # the same object again is harmless (a module imported twice)
    register_change_model("test-band-mean-difference")(band_mean_difference)
    assert "test-band-mean-difference" in available_change_models()


def test_unknown_kind_names_the_known_kinds() -> None:
    with pytest.raises(ModelError, match="no change model kind named 'unet'") as err:
        get_change_model_kind("unet")
    assert "cach, cva-baseline" in str(err.value) and "test-band-mean-difference" in str(err.value)
    with pytest.raises(JobSpecError, match="unknown change model 'unet'; use one of cach, cva-baseline"):
        engine_job("out", models={"change_model": "unet"})


def test_bad_options_and_checkpoint_conflicts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot be built with options .*'width'"):
        get_change_model_kind("test-band-mean-difference").build(BANDS, {"width": 3})
    with pytest.raises(ModelError, match="takes no options"):
        get_change_model_kind("cva-baseline").build(BANDS, {"gain": 3})
    with pytest.raises(ModelError, match="built from a checkpoint only"):
        get_change_model_kind("cach").build(BANDS, {})
    with pytest.raises(ModelError, match="cannot save a BandMeanDifference: no change model kind saves it"):
        save_change_model(BandMeanDifference(BANDS, 1.0), tmp_path / "toy.safetensors")
    baseline = get_change_model_kind("cva-baseline").build(BANDS, {})
    save_change_model(baseline, tmp_path / "cva.safetensors")
    with pytest.raises(JobSpecError, match="drop one or the other"):
        engine_job(
            "out",
            models={
                "checkpoint": str(tmp_path / "cva.safetensors"),
                "change_model": "test-band-mean-difference",
            },
        )


class Scaled(ChangeModelKind):
    """A kind with a checkpoint format of its own: the toy, its gain kept in the metadata."""

    def build(self, bands: tuple[str, ...], options: object) -> ChangeModel:
        return BandMeanDifference(bands, 2.0)

    def saves(self, model: object) -> bool:
        return isinstance(model, BandMeanDifference)

    def checkpoint_entries(
        self, model: ChangeModel, *, include_backbone: bool
    ) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
        assert isinstance(model, BandMeanDifference)
        return {"gain": str(model.gain)}, {}

    def load(self, info: object, path: Path, backbone_weights: Path | None) -> ChangeModel:
        from seg2change_core.checkpoints import CheckpointInfo

        assert isinstance(info, CheckpointInfo)
        return BandMeanDifference(info.normalisation.bands, float(info.metadata["gain"]))


def test_a_registered_kind_saves_and_loads_its_own_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "toy.safetensors"
    register_change_model("test-scaled-band-mean")(Scaled)
    try:
        save_change_model(BandMeanDifference(("red", "nir"), 3.5), path)
        loaded = load_change_model(path)
        assert isinstance(loaded, BandMeanDifference)
        assert (loaded.gain, loaded.bands) == (3.5, ("red", "nir"))
    finally:
        from seg2change_core import change_kinds

        del change_kinds._REGISTRY["test-scaled-band-mean"], change_kinds._SOURCES["test-scaled-band-mean"]
    with pytest.raises(CheckpointError, match="unknown architecture 'test-scaled-band-mean'"):
        load_change_model(path)


def test_an_installed_package_declares_its_kind_by_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib.metadata import EntryPoint

    from seg2change_core import change_kinds, plugins

    (tmp_path / "toy_plugin.py").write_text(
        "from seg2change_core.change_kinds import register_change_model\n"
        "from seg2change_core.baselines import CVABaseline\n"
        "from seg2change_core.change_model import InputNormalisation\n\n"
        "@register_change_model('test-plugin-kind')\n"
        "def make(bands):\n"
        "    return CVABaseline(InputNormalisation(bands, (0.0,) * len(bands), (1.0,) * len(bands)))\n"
    )
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('no weights here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [EntryPoint("toy", "toy_plugin", change_kinds.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(plugins, "entry_points", lambda group: points)
    monkeypatch.setattr(change_kinds.PLUGINS, "loaded", False)
    monkeypatch.setattr(change_kinds, "_REGISTRY", dict(change_kinds._REGISTRY))
    monkeypatch.setattr(change_kinds, "_SOURCES", dict(change_kinds._SOURCES))
    assert get_change_model_kind("test-plugin-kind").describe(("red",), {}).needs_fit

    points[:] = [EntryPoint("broken", "broken_plugin", change_kinds.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(change_kinds.PLUGINS, "loaded", False)
    with pytest.raises(ModelError, match="entry point 'broken' .* failed to load .*no weights here"):
        get_change_model_kind("test-other-kind")
