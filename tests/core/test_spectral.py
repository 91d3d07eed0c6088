"""Spectral-index segmenter: lexicon, errors, per-pixel behaviour, accuracy on generated scenes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seg2change_core.errors import MissingBandError, SegmenterError
from seg2change_core.prompts import PromptSet
from seg2change_core.segmenters import (
    Segmenter,
    available_segmenters,
    get_segmenter,
    register_segmenter,
)
from seg2change_core.segmenters.spectral import LEXICON, SpectralSegmenter, lookup

# Typical Sentinel-2 L2A reflectances (blue, green, red, nir, swir16, swir22).
SIGNATURES = {
    "water": (0.06, 0.07, 0.05, 0.03, 0.01, 0.005),
    "forest": (0.03, 0.05, 0.03, 0.35, 0.17, 0.08),
    "grass": (0.04, 0.08, 0.06, 0.30, 0.22, 0.12),
    "cropland": (0.05, 0.08, 0.07, 0.28, 0.25, 0.15),
    "bare soil": (0.10, 0.14, 0.19, 0.24, 0.32, 0.28),
    "building": (0.16, 0.17, 0.18, 0.20, 0.26, 0.24),
    "road": (0.10, 0.11, 0.12, 0.14, 0.18, 0.17),
    "burned area": (0.04, 0.05, 0.06, 0.09, 0.18, 0.16),
}
NAMES = list(SIGNATURES)


def pixels(*names: str) -> torch.Tensor:
    """A (1, 6, 1, N) image of the named signatures."""
    return torch.tensor([SIGNATURES[n] for n in names]).T.reshape(1, 6, 1, len(names))


def test_registry_builds_a_segmenter_that_follows_the_protocol() -> None:
    assert {"spectral", "clip"} <= set(available_segmenters())
    seg = get_segmenter("spectral")
    assert isinstance(seg, SpectralSegmenter) and isinstance(seg, Segmenter)
    assert seg.bands == ("blue", "green", "red", "nir", "swir16", "swir22")
    assert "0..1" in seg.normalisation
    with pytest.raises(SegmenterError, match="available: .*clip.*spectral"):
        get_segmenter("sam")
    with pytest.raises(SegmenterError, match="already registered"):
        register_segmenter("spectral")(lambda: seg)


def test_every_signature_gets_its_own_class() -> None:
    probs = SpectralSegmenter().segment(pixels(*NAMES), PromptSet.from_string(";".join(NAMES)))
    assert probs.shape == (1, len(NAMES), 1, len(NAMES))
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 1, len(NAMES)))
    assert probs[0, :, 0].argmax(0).tolist() == list(range(len(NAMES)))


def test_synonyms_and_plurals_select_the_same_evidence() -> None:
    seg = SpectralSegmenter()
    image = pixels("water", "forest", "building", "bare soil")
    canonical = seg.segment(image, PromptSet.from_string("water;forest;building;bare soil"))
    synonyms = seg.segment(image, PromptSet.from_string("River;trees;roof,house;Bare-Land"))
    torch.testing.assert_close(canonical, synonyms)
    assert lookup("Burn_Scar") is lookup("burned area")
    for entry in LEXICON:  # no name is claimed by two concepts
        assert all(lookup(name) is entry for name in (entry.concept, *entry.names))
    assert lookup("parking lots") is lookup("road")


def test_grouped_prompts_cover_their_members() -> None:
    ps = PromptSet.from_string("water;vegetation;built-up;bare soil;burned area")
    labels = SpectralSegmenter().segment(pixels(*NAMES), ps)[0, :, 0].argmax(0).tolist()
    assert labels == [0, 1, 1, 1, 3, 2, 2, 4]


def test_background_wins_where_no_requested_class_has_evidence() -> None:
    ps = PromptSet.from_string("water", background="background")
    probs = SpectralSegmenter().segment(pixels("water", "forest", "building"), ps)
    assert probs[0, :, 0].argmax(0).tolist() == [1, 0, 0]
    assert float(probs[0, 1, 0, 0]) > 0.85


def test_unknown_class_names_the_lexicon_and_the_clip_segmenter() -> None:
    with pytest.raises(SegmenterError) as info:
        SpectralSegmenter().segment(pixels("water"), PromptSet.from_string("water;solar panel"))
    message = str(info.value)
    assert "'solar panel'" in message and "'clip'" in message
    for entry in LEXICON:
        assert entry.concept in message


def test_unknown_synonyms_are_ignored_when_one_is_known() -> None:
    seg = SpectralSegmenter()
    a = seg.segment(pixels("water", "forest"), PromptSet.from_string("water,aqua marina;forest"))
    b = seg.segment(pixels("water", "forest"), PromptSet.from_string("water;forest"))
    torch.testing.assert_close(a, b)


def test_missing_bands_are_named() -> None:
    rgb = SpectralSegmenter(bands=("red", "green", "blue"))
    with pytest.raises(MissingBandError) as info:
        rgb.segment(torch.zeros(1, 3, 2, 2), PromptSet.from_string("water;forest"))
    assert "nir (for water, forest)" in str(info.value) and "swir16" in str(info.value)
    red_nir = SpectralSegmenter(bands=("red", "nir"))
    probs = red_nir.segment(
        pixels("forest", "water")[:, [2, 3]], PromptSet.from_string("vegetation", background="other")
    )
    assert probs[0, :, 0].argmax(0).tolist() == [1, 0]


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (torch.full((1, 6, 2, 2), 1200.0), "digital numbers"),
        (torch.full((1, 6, 2, 2), 1200, dtype=torch.int32), "floating-point"),
        (torch.zeros(1, 5, 2, 2), r"\(B, 6, H, W\)"),
        (torch.zeros(6, 2, 2), r"\(B, 6, H, W\)"),
    ],
)
def test_bad_images_are_refused(image: torch.Tensor, match: str) -> None:
    with pytest.raises(SegmenterError, match=match):
        SpectralSegmenter().segment(image, PromptSet.from_string("water"))


def test_result_is_per_pixel_so_tiling_cannot_change_it() -> None:
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(2, 6, 37, 53, generator=gen, dtype=torch.float64) * 0.4
    ps = PromptSet.from_string(";".join(NAMES), background="background")
    seg = SpectralSegmenter()
    whole = seg.segment(image, ps)
    assert whole.dtype == torch.float64 and whole.shape == (2, 9, 37, 53)
    tiles = torch.cat(
        [torch.cat([seg.segment(image[..., r : r + 16, c : c + 16], ps) for c in range(0, 53, 16)], -1)
         for r in range(0, 37, 16)],
        -2,
    )  # fmt: skip
    assert torch.equal(whole, tiles)
    assert seg.segment(image[:1, :, 5:6, 7:8], ps).equal(whole[:1, :, 5:6, 7:8])


def test_nan_pixels_give_nan_and_leave_others_alone() -> None:
    image = pixels("water", "forest")
    image[0, 3, 0, 1] = float("nan")
    probs = SpectralSegmenter().segment(image, PromptSet.from_string("water;forest"))
    assert torch.isnan(probs[0, :, 0, 1]).all()
    assert int(probs[0, :, 0, 0].argmax()) == 0


def test_generated_scene_classes_reach_iou_080() -> None:
    """Acceptance: water, vegetation, built-up and bare soil IoU >= 0.8 on clear acquisitions."""
    synthetic = pytest.importorskip("pipeline.synthetic")
    from rasterio.windows import Window

    lc = synthetic.LandCover
    spec = synthetic.SceneSpec(size=512, seed=11, cloud_fraction=0.0, acquisitions_per_epoch=1)
    window = Window(0, 0, 512, 512)
    truth = dict(zip(("before", "after"), synthetic.truth_window(spec, window)[:2], strict=True))
    ps = PromptSet.from_string("water;forest;grass;cropland;bare soil;road;building;burned area")
    codes = np.array(
        [lc.WATER, lc.FOREST, lc.GRASS, lc.CROPLAND, lc.BARE_SOIL, lc.ROAD, lc.BUILDING, lc.BURNED]
    )
    groups = {
        "water": [lc.WATER],
        "vegetation": [lc.FOREST, lc.GRASS, lc.CROPLAND],
        "built-up": [lc.ROAD, lc.BUILDING],
        "bare soil": [lc.BARE_SOIL],
    }
    seg = SpectralSegmenter(bands=synthetic.BAND_NAMES)
    for acquisition in synthetic.acquisitions(spec):
        assert acquisition.cloud_fraction == 0.0
        dn = synthetic.acquisition_window(spec, acquisition, window)
        refl = np.stack([dn[b] for b in synthetic.BAND_NAMES]).astype(np.float32) * synthetic.SCALE
        refl += synthetic.OFFSET
        labels = seg.segment(torch.from_numpy(refl)[None], ps)[0].argmax(0).numpy()
        predicted, actual = codes[labels], truth[acquisition.epoch.value]
        for name, members in groups.items():
            t, p = np.isin(actual, members), np.isin(predicted, members)
            assert t.sum() > 500, f"{name} is too rare in this scene to score"
            iou = (t & p).sum() / (t | p).sum()
            assert iou >= 0.8, f"{acquisition.epoch.value} {name} IoU {iou:.3f}"
