"""Fusion of agnostic change and class maps: hand-checked pixels, soft scores, codes, errors."""

from __future__ import annotations

import pytest
import torch

from seg2change_core.errors import ModelError
from seg2change_core.fusion import NO_CHANGE, class_index, decode_transition, fuse
from seg2change_core.prompts import PromptSet

# Channels: 0 background, 1 building, 2 water. Target: building only.
PROMPTS = PromptSet.from_string("building,roof;water", background="background", targets=["roof"])


def probs(*rows: tuple[float, float, float]) -> torch.Tensor:
    """(1, 3, 1, N) class probabilities, one pixel per row."""
    return torch.tensor(rows).T.reshape(1, 3, 1, len(rows))


def hand_example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    change = torch.tensor([0.9, 0.2, 0.6, 0.5, 0.7, 0.8]).view(1, 1, 1, 6)
    before = probs(
        (0.6, 0.3, 0.1),  # background
        (0.1, 0.1, 0.8),  # water
        (0.2, 0.2, 0.6),  # water
        (0.1, 0.8, 0.1),  # building
        (0.5, 0.4, 0.1),  # background
        (0.1, 0.7, 0.2),  # building
    )
    after = probs(
        (0.2, 0.7, 0.1),  # building
        (0.1, 0.8, 0.1),  # building
        (0.1, 0.1, 0.8),  # water
        (0.8, 0.1, 0.1),  # background
        (0.9, 0.05, 0.05),  # background
        (0.2, 0.1, 0.7),  # water
    )
    return change, before, after


def test_hand_computed_pixels() -> None:
    fused = fuse(*hand_example(), PROMPTS)
    assert fused.num_classes == 3
    assert fused.change.flatten().tolist() == [True, False, True, False, True, True]  # 0.5 is not > 0.5
    assert fused.class_before.flatten().tolist() == [0, 2, 2, 1, 0, 1]
    assert fused.class_after.flatten().tolist() == [1, 1, 2, 0, 0, 2]
    # before * 3 + after inside the change; bg->bg (code 0) is "changed, class unknown".
    assert fused.transition.flatten().tolist() == [1, NO_CHANGE, 8, NO_CHANGE, 0, 5]
    assert fused.target_change.flatten().tolist() == [True, False, False, False, False, True]
    assert fused.per_target.shape == (1, 1, 1, 6)
    assert torch.equal(fused.per_target, fused.target_change)
    assert fused.unknown_change.flatten().tolist() == [False, False, False, False, True, False]
    for name in ("class_before", "class_after", "transition"):
        assert getattr(fused, name).dtype == torch.int64


def test_soft_target_change_is_p_times_union_probability() -> None:
    change, before, after = hand_example()
    fused = fuse(change, before, after, PROMPTS)
    pb, pa = before[0, 1, 0], after[0, 1, 0]
    expected = change[0, 0, 0] * (pb + pa - pb * pa)
    torch.testing.assert_close(fused.soft_per_target[0, 0, 0], expected)
    assert fused.soft_per_target[0, 0, 0, 0].item() == pytest.approx(0.9 * (0.3 + 0.7 - 0.21))


def test_several_targets_and_no_background() -> None:
    prompts = PromptSet.from_string("building;water;tree")  # all three are targets
    change = torch.tensor([0.9, 0.9, 0.1]).view(1, 1, 1, 3)
    before = probs((0.8, 0.1, 0.1), (0.1, 0.1, 0.8), (0.8, 0.1, 0.1))
    after = probs((0.1, 0.8, 0.1), (0.1, 0.1, 0.8), (0.1, 0.8, 0.1))
    fused = fuse(change, before, after, prompts)
    assert fused.transition.flatten().tolist() == [0 * 3 + 1, 2 * 3 + 2, NO_CHANGE]
    assert fused.per_target[0, :, 0].tolist() == [
        [True, False, False],  # building: pixel 0 (before)
        [True, False, False],  # water: pixel 0 (after)
        [False, True, False],  # tree: pixel 1 (tree -> tree inside the change)
    ]
    assert fused.target_change.flatten().tolist() == [True, True, False]
    assert not fused.unknown_change.any()


def test_change_decision_is_the_argmax_of_two_logits() -> None:
    logits = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    p = torch.softmax(logits, dim=1)[:, 1:]
    uniform = torch.full((2, 3, 8, 8), 1 / 3)
    fused = fuse(p, uniform, uniform, PROMPTS)
    assert torch.equal(fused.change, logits.argmax(1, keepdim=True) == 1)


def test_decode_transition_inverts_the_code() -> None:
    before = torch.arange(5).repeat_interleave(5)
    after = torch.arange(5).repeat(5)
    code = torch.where(before == after, NO_CHANGE, before * 5 + after)
    b, a = decode_transition(code, 5)
    keep = before != after
    assert torch.equal(b[keep], before[keep]) and torch.equal(a[keep], after[keep])
    assert (b[~keep] == NO_CHANGE).all() and (a[~keep] == NO_CHANGE).all()


@pytest.mark.parametrize(
    ("change", "before", "after", "match"),
    [
        (torch.rand(1, 2, 4, 4), torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4), r"\(B, 1, H, W\)"),
        (torch.rand(1, 1, 4, 4), torch.rand(1, 2, 4, 4), torch.rand(1, 3, 4, 4), "3 prompt classes"),
        (torch.rand(1, 1, 4, 4), torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 5), "same batch and pixels"),
        (torch.rand(2, 1, 4, 4), torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4), "same batch and pixels"),
    ],
)
def test_inconsistent_shapes_are_refused(
    change: torch.Tensor, before: torch.Tensor, after: torch.Tensor, match: str
) -> None:
    with pytest.raises(ModelError, match=match):
        fuse(change, before, after, PROMPTS)


def test_class_index_equals_argmax_over_channels_ties_to_the_first() -> None:
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(2, 5, 33, 17, generator=generator)
    probs[0, 3, 0, 0] = probs[0, 1, 0, 0] = 2.0  # a tie: the first class wins, as with argmax
    index = class_index(probs)
    assert index.shape == (2, 1, 33, 17) and index.dtype == torch.int64
    assert torch.equal(index, probs.argmax(dim=1, keepdim=True))
    assert int(index[0, 0, 0, 0]) == 1
