"""Every built-in segmenter and change model passes the conformance kits of seg2change_core.conformance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from seg2change_core.backbones import ConvConfig, ConvPyramid, DinoV2Config, DinoVisionTransformer
from seg2change_core.baselines import CVABaseline, StandardisedCVABaseline
from seg2change_core.cach import CACHHead
from seg2change_core.change_model import CACHChangeModel, ChangeModel, InputNormalisation
from seg2change_core.conformance import ChangeModelConformance, SegmenterConformance
from seg2change_core.segmenters import Segmenter, get_segmenter
from seg2change_core.segmenters.clip import ByteTokenizer
from seg2change_core.segmenters.clip_model import CLIP, CLIPConfig

TINY_CLIP = CLIPConfig(
    embed_dim=32,
    image_size=32,
    patch_size=8,
    vision_width=64,
    vision_layers=2,
    vision_heads=1,
    context_length=16,
    vocab_size=300,
    text_width=32,
    text_layers=2,
    text_heads=1,
)
TINY_DINOV2 = DinoV2Config(
    "dinov2_test_tiny", embed_dim=32, depth=4, num_heads=2, default_layers=(0, 1, 2, 3)
)
TINY_CONV = ConvConfig(
    in_chans=4, widths=(8, 8, 16, 16), blocks=(1, 1, 1, 1), stem_width=8, embed_dim=16, groups=4
)
S2_FOUR = InputNormalisation(
    bands=("blue", "green", "red", "nir"), mean=(0.1, 0.1, 0.1, 0.3), std=(0.05, 0.05, 0.05, 0.1), scale=1e-4
)


@pytest.fixture(scope="module")
def clip_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in CLIP(TINY_CLIP).state_dict().items()}
    path = tmp_path_factory.mktemp("clip") / "clip.safetensors"
    save_file(state, str(path))
    return path


class TestSpectralSegmenter(SegmenterConformance):
    def make_segmenter(self) -> Segmenter:
        return get_segmenter("spectral")


class TestCLIPSegmenter(SegmenterConformance):
    @pytest.fixture(autouse=True)
    def _weights(self, clip_weights: Path) -> None:
        self.weights = clip_weights

    def make_segmenter(self) -> Segmenter:
        return get_segmenter("clip", weights=self.weights, tokenizer=ByteTokenizer(vocab_size=300))


class TestCACHOnDinoV2(ChangeModelConformance):
    def make_model(self) -> ChangeModel:
        torch.manual_seed(0)
        backbone = DinoVisionTransformer(TINY_DINOV2)
        return CACHChangeModel(backbone, CACHHead(32), InputNormalisation.imagenet_rgb()).eval()


class TestCACHOnConvBackboneWithPerImageNormalisation(ChangeModelConformance):
    def make_model(self) -> ChangeModel:
        torch.manual_seed(0)
        normalisation = InputNormalisation(
            S2_FOUR.bands, S2_FOUR.mean, S2_FOUR.std, S2_FOUR.scale, per_image=True
        )
        return CACHChangeModel(ConvPyramid(TINY_CONV), CACHHead(16), normalisation).eval()


class TestCVABaseline(ChangeModelConformance):
    def make_model(self) -> ChangeModel:
        model = CVABaseline(S2_FOUR)
        model.fit(*self.make_pair(model, 2, 48, 48, seed=1))
        return model


class TestStandardisedCVABaseline(ChangeModelConformance):
    def make_model(self) -> ChangeModel:
        model = StandardisedCVABaseline(S2_FOUR)
        model.fit(*self.make_pair(model, 2, 48, 48, seed=1))
        return model


class _AcceptsAnything(SegmenterConformance):
    """A segmenter that breaks the contract: the kit must notice."""

    def make_segmenter(self) -> Segmenter:
        spectral = get_segmenter("spectral")

        class Lenient:
            name, bands, normalisation = spectral.name, spectral.bands, spectral.normalisation

            def segment(self, image: torch.Tensor, classes: object) -> torch.Tensor:
                batch, _, height, width = image.shape if image.dim() == 4 else (1, 0, *image.shape[-2:])
                k = classes.num_classes  # type: ignore[attr-defined]
                return torch.full((batch, k, height, width), 1.0 / k) * (1 + 0.1 * batch)

        return Lenient()


def test_the_kits_fail_a_model_that_breaks_the_contract() -> None:
    kit = _AcceptsAnything()
    with pytest.raises(AssertionError, match="accepted"):
        kit.test_refuses_a_wrong_band_count_and_integer_images()
    with pytest.raises(AssertionError):
        kit.test_gives_probabilities_over_the_classes_at_any_size()
    with pytest.raises(AssertionError, match="batch"):
        kit.test_a_tile_does_not_depend_on_its_batch_or_on_earlier_calls()


def test_an_unfitted_cva_baseline_depends_on_its_batch() -> None:
    """Why the kit's CVA models are fitted first: an unfitted one fits on each call's inputs."""

    class Unfitted(TestCVABaseline):
        def make_model(self) -> ChangeModel:
            return CVABaseline(S2_FOUR)

    with pytest.raises(AssertionError, match="batch"):
        Unfitted().test_a_tile_does_not_depend_on_its_batch_or_on_earlier_calls()
