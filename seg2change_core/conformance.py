"""Conformance test kits that every segmenter and change model must pass (like zarr's ``StoreTests``).

Subclass a kit in a test module under a name pytest collects (``Test...``) and say how to build
the model; every ``test_*`` method then runs against it::

    from seg2change_core.conformance import SegmenterConformance

    class TestMySegmenter(SegmenterConformance):
        def make_segmenter(self) -> Segmenter:
            return get_segmenter("mine", weights=...)

The kits hold what the tiled engine relies on: the Protocol's attributes, output shapes and
value ranges at any image size, results that depend on neither the batch a tile is computed in
nor earlier calls, inputs left as they were, nodata that stays local, and bad inputs refused with
the model's own error (a :class:`~seg2change_core.errors.Seg2ChangeError` naming the fix). They
need no test framework of their own: plain ``assert`` statements, run by pytest.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from seg2change_core.change_model import ChangeModel
from seg2change_core.errors import Seg2ChangeError
from seg2change_core.prompts import PromptSet
from seg2change_core.segmenters import Segmenter, available_segmenters

__all__ = ["ChangeModelConformance", "SegmenterConformance"]

#: Image sides the kits try: not multiples of any patch or window size, one smaller than others.
ODD_SIZE = (37, 53)


def _refusal(call: Callable[[], object]) -> Seg2ChangeError:
    """The error ``call`` raises; fails unless it is one of the project's errors."""
    try:
        call()
    except Seg2ChangeError as exc:
        assert str(exc), "a refusal must say what is wrong and what to do"
        return exc
    raise AssertionError("the bad input was accepted; refuse it with a Seg2ChangeError that names the fix")


def _close(a: torch.Tensor, b: torch.Tensor, atol: float) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=atol, rtol=0.0))


class SegmenterConformance:
    """Tests every :class:`~seg2change_core.segmenters.Segmenter` passes.

    Subclasses implement :meth:`make_segmenter`; they may override :meth:`make_prompts` and
    :meth:`make_image` (random values in 0..1 by default) to suit the segmenter.
    """

    #: Largest difference allowed between results that must be equal (batching, repeated calls).
    atol = 1e-5

    def make_segmenter(self) -> Segmenter:
        """The segmenter under test (a new one per call)."""
        raise NotImplementedError("return the segmenter under test")

    def make_prompts(self) -> PromptSet:
        """Classes to segment."""
        return PromptSet.from_string("building,roof;water,river;tree,forest", background="background")

    def make_image(
        self, segmenter: Segmenter, batch: int, height: int, width: int, seed: int = 0
    ) -> torch.Tensor:
        """A ``(batch, len(bands), height, width)`` image in the segmenter's value range."""
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(batch, len(segmenter.bands), height, width, generator=generator)

    def test_follows_the_protocol_and_is_registered(self) -> None:
        segmenter = self.make_segmenter()
        assert isinstance(segmenter, Segmenter)
        assert segmenter.name in available_segmenters(), (
            f"register {segmenter.name!r} with @register_segmenter"
        )
        assert segmenter.bands and all(isinstance(band, str) and band for band in segmenter.bands)
        assert len(set(segmenter.bands)) == len(segmenter.bands), "each band once"
        assert isinstance(segmenter.normalisation, str) and segmenter.normalisation

    def test_gives_probabilities_over_the_classes_at_any_size(self) -> None:
        segmenter, prompts = self.make_segmenter(), self.make_prompts()
        for height, width in (ODD_SIZE, (64, 64)):
            image = self.make_image(segmenter, 2, height, width)
            out = segmenter.segment(image, prompts)
            assert out.shape == (2, prompts.num_classes, height, width)
            assert out.is_floating_point() and bool(torch.isfinite(out).all())
            assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 + 1e-6
            assert _close(out.sum(dim=1), torch.ones(2, height, width), atol=1e-4)

    def test_a_tile_does_not_depend_on_its_batch_or_on_earlier_calls(self) -> None:
        segmenter, prompts = self.make_segmenter(), self.make_prompts()
        image = self.make_image(segmenter, 3, *ODD_SIZE)
        together = segmenter.segment(image, prompts)
        alone = torch.cat([segmenter.segment(image[i : i + 1], prompts) for i in range(3)])
        assert _close(together, alone, self.atol), "a tile's result changed with the batch it was in"
        assert _close(segmenter.segment(image, prompts), together, self.atol), "a second call differed"

    def test_leaves_its_input_as_it_was(self) -> None:
        segmenter = self.make_segmenter()
        image = self.make_image(segmenter, 1, *ODD_SIZE)
        kept = image.clone()
        segmenter.segment(image, self.make_prompts())
        assert torch.equal(image, kept)

    def test_refuses_a_wrong_band_count_and_integer_images(self) -> None:
        segmenter, prompts = self.make_segmenter(), self.make_prompts()
        image = self.make_image(segmenter, 1, *ODD_SIZE)
        _refusal(lambda: segmenter.segment(torch.cat([image, image[:, :1]], dim=1), prompts))
        _refusal(lambda: segmenter.segment(image[0], prompts))
        _refusal(lambda: segmenter.segment((image * 1000).to(torch.int32), prompts))


class ChangeModelConformance:
    """Tests every :class:`~seg2change_core.change_model.ChangeModel` passes.

    Subclasses implement :meth:`make_model` (fitted, if the model fits values to a scene); they may
    override :meth:`make_pair` (random reflectance 0..1 brought to the model's raw values by
    default).
    """

    #: Largest difference allowed between results that must be equal (batching, repeated calls).
    atol = 1e-5

    def make_model(self) -> ChangeModel:
        """The change model under test (a new one per call)."""
        raise NotImplementedError("return the change model under test")

    def make_pair(
        self, model: ChangeModel, batch: int, height: int, width: int, seed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw ``(batch, in_channels, height, width)`` before/after batches with a changed square."""
        generator = torch.Generator().manual_seed(seed)
        before = torch.rand(batch, model.in_channels, height, width, generator=generator)
        after = before.clone()
        after[:, :, height // 4 : height // 2, width // 4 : width // 2] = torch.rand(
            batch, model.in_channels, height // 2 - height // 4, width // 2 - width // 4, generator=generator
        )
        scale = model.normalisation.scale
        return before / scale, after / scale

    def test_follows_the_protocol(self) -> None:
        model = self.make_model()
        assert isinstance(model, ChangeModel)
        assert isinstance(model.name, str) and model.name
        assert model.in_channels == len(model.bands) == model.normalisation.num_bands
        assert model.tile_size is None or (isinstance(model.tile_size, int) and model.tile_size > 0)

    def test_gives_a_probability_at_any_size(self) -> None:
        model = self.make_model()
        for height, width in (ODD_SIZE, (64, 64)):
            before, after = self.make_pair(model, 2, height, width)
            out = model.predict(before, after)
            assert out.shape == (2, 1, height, width)
            assert out.is_floating_point() and bool(torch.isfinite(out).all())
            assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0

    def test_a_tile_does_not_depend_on_its_batch_or_on_earlier_calls(self) -> None:
        model = self.make_model()
        before, after = self.make_pair(model, 3, *ODD_SIZE)
        together = model.predict(before, after)
        alone = torch.cat([model.predict(before[i : i + 1], after[i : i + 1]) for i in range(3)])
        assert _close(together, alone, self.atol), "a tile's result changed with the batch it was in"
        assert _close(model.predict(before, after), together, self.atol), "a second call differed"

    def test_leaves_its_inputs_as_they_were(self) -> None:
        model = self.make_model()
        before, after = self.make_pair(model, 1, *ODD_SIZE)
        kept = before.clone(), after.clone()
        model.predict(before, after)
        assert torch.equal(before, kept[0]) and torch.equal(after, kept[1])

    def test_nodata_gives_finite_probabilities(self) -> None:
        model = self.make_model()
        before, after = self.make_pair(model, 1, *ODD_SIZE)
        before[:, :, :5, :7] = float("nan")
        after[:, 0, -3:, -4:] = float("nan")
        out = model.predict(before, after)
        assert bool(torch.isfinite(out).all()), "nodata must not turn probabilities into NaN"

    def test_refuses_mismatched_dates_and_a_wrong_band_count(self) -> None:
        model = self.make_model()
        before, after = self.make_pair(model, 1, *ODD_SIZE)
        _refusal(lambda: model.predict(before, after[:, :, :-1]))
        extra = torch.cat([before, before[:, :1]], dim=1)
        _refusal(lambda: model.predict(extra, torch.cat([after, after[:, :1]], dim=1)))
