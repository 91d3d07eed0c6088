"""Acceptance: fusion with the true change mask recovers the true from->to transitions.

On a generated scene with clear acquisitions, the spectral segmenter labels each date and
:func:`seg2change_core.fusion.fuse` gates the two class maps with the *true* change mask (as a 0/1
probability), so every error left is the segmenter's. The recovered transition of a changed pixel
is right when its before class and its after class both fall in the group of the true classes.

Groups are the distinctions the segmenter makes reliably from single-date spectra: water,
vegetation (forest, grass, cropland), bare soil, built-up (road, building) and burned area; the
lexicon documents that forest, grass and cropland, and roofs and roads, are told apart less
reliably. The measures, both on the changed pixels of the true change mask:

* the share of changed pixels whose grouped transition is recovered is at least 0.9;
* every true grouped transition with at least 200 pixels is itself recovered on at least 0.9 of
  its pixels, so a rare transition cannot fail behind a common one.

A control fuses the two dates the wrong way round; the same measure must then collapse, which
shows that it can fail.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from seg2change_core.fusion import NO_CHANGE, decode_transition, fuse
from seg2change_core.prompts import PromptSet
from seg2change_core.segmenters.spectral import SpectralSegmenter

synthetic = pytest.importorskip("pipeline.synthetic")
from rasterio.windows import Window  # noqa: E402

LC = synthetic.LandCover
SPEC = synthetic.SceneSpec(size=512, seed=4, cloud_fraction=0.0, acquisitions_per_epoch=1)

#: One prompt per generated class, in channel order, with the class it stands for.
PROMPTS: tuple[tuple[str, int], ...] = tuple(
    (prompt, int(lc)) for lc, prompt in synthetic.LAND_COVER_PROMPTS.items()
)
GROUPS: dict[str, tuple[int, ...]] = {g: tuple(map(int, m)) for g, m in synthetic.COARSE_GROUPS.items()}
MIN_SHARE = 0.9
MIN_PIXELS = 200

#: Arrays of the scored scene, by name (see the ``scene`` fixture).
Scene = dict[str, NDArray[Any]]


def _group_of_landcover() -> NDArray[np.int64]:
    lut = np.full(max(LC) + 1, -1, dtype=np.int64)
    for g, members in enumerate(GROUPS.values()):
        lut[list(members)] = g
    return lut


@pytest.fixture(scope="module")
def scene() -> Scene:
    """True and recovered (grouped) classes of the changed pixels, and the fused codes."""
    window = Window(0, 0, SPEC.size, SPEC.size)
    before, after, change_type = synthetic.truth_window(SPEC, window)
    prompts = PromptSet.from_string(";".join(p for p, _ in PROMPTS))
    segmenter = SpectralSegmenter(bands=synthetic.BAND_NAMES)
    probs = {}
    for acquisition in synthetic.acquisitions(SPEC):
        assert acquisition.cloud_fraction == 0.0
        dn = synthetic.acquisition_window(SPEC, acquisition, window)
        refl = np.stack([dn[b] for b in synthetic.BAND_NAMES]).astype(np.float32) * synthetic.SCALE
        refl += synthetic.OFFSET
        probs[acquisition.epoch.value] = segmenter.segment(torch.from_numpy(refl)[None], prompts)
    changed = change_type != 0
    p = torch.from_numpy(changed.astype(np.float32))[None, None]
    fused = fuse(p, probs["before"], probs["after"], prompts)
    swapped = fuse(p, probs["after"], probs["before"], prompts)

    to_group = _group_of_landcover()
    channel_group = to_group[np.array([lc for _, lc in PROMPTS])]
    k = prompts.num_classes

    def recovered(codes: torch.Tensor) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        b, a = decode_transition(codes[0, 0], k)
        return channel_group[b.numpy()[changed]], channel_group[a.numpy()[changed]]

    pred_b, pred_a = recovered(fused.transition)
    swap_b, swap_a = recovered(swapped.transition)
    return {
        "changed": changed,
        "transition": fused.transition[0, 0].numpy(),
        "true_before": to_group[before[changed]],
        "true_after": to_group[after[changed]],
        "pred_before": pred_b,
        "pred_after": pred_a,
        "swap_before": swap_b,
        "swap_after": swap_a,
    }


def test_fusion_marks_exactly_the_true_change(scene: Scene) -> None:
    changed, transition = scene["changed"], scene["transition"]
    assert changed.sum() > 5000, "the scene has too little change to score"
    assert (transition[~changed] == NO_CHANGE).all()
    assert (transition[changed] >= 0).all()


def test_grouped_transitions_are_recovered(scene: Scene) -> None:
    true_b, true_a = scene["true_before"], scene["true_after"]
    assert (true_b >= 0).all() and (true_a >= 0).all(), "a generated class is in no group"
    assert (true_b != true_a).any(), "no changed pixel changes group: nothing to recover"
    hit = (scene["pred_before"] == true_b) & (scene["pred_after"] == true_a)
    share = hit.mean()
    assert share >= MIN_SHARE, f"grouped transitions recovered on {share:.3f} of changed pixels"

    names = list(GROUPS)
    scored = 0
    for code in np.unique(true_b * len(names) + true_a):
        rows = true_b * len(names) + true_a == code
        if rows.sum() < MIN_PIXELS:
            continue
        scored += 1
        label = f"{names[code // len(names)]} -> {names[code % len(names)]}"
        recall = hit[rows].mean()
        assert recall >= MIN_SHARE, f"{label}: recovered on {recall:.3f} of {rows.sum()} pixels"
    assert scored >= 5, f"only {scored} transitions have {MIN_PIXELS}+ pixels: use a larger scene"


def test_swapping_the_dates_is_caught(scene: Scene) -> None:
    """The measure can fail: fusing after-before instead of before-after recovers almost nothing."""
    hit = (scene["swap_before"] == scene["true_before"]) & (scene["swap_after"] == scene["true_after"])
    same_group = scene["true_before"] == scene["true_after"]
    assert hit.mean() < 0.1 + same_group.mean()
