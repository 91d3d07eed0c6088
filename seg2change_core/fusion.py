"""Fusion: the category-agnostic change probability gated by the two dates' class maps.

As in Seg2Change, *whether* a pixel changed comes only from the agnostic change head and *what*
it changed from and to comes only from the open-vocabulary segmentation of each date. Decisions
are argmaxes, so there is no threshold to tune: the change decision ``p > 0.5`` is the argmax of
the head's two logits, and each date's class is the argmax of its class probabilities.

Codes
-----
Class maps hold channel indices of the :class:`~seg2change_core.prompts.PromptSet` (the
background, when there is one, is channel 0). The *transition code* of a changed pixel is
``before * K + after`` (``0 .. K*K - 1``); unchanged pixels hold :data:`NO_CHANGE` (-1). With a
background, code ``0`` (background to background) means "changed, class unknown": the agnostic
head saw a change but neither date shows a requested class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seg2change_core.errors import ModelError
from seg2change_core.prompts import PromptSet

__all__ = ["NO_CHANGE", "FusedChange", "class_index", "decode_transition", "fuse", "transition_code"]

#: Transition code of pixels the agnostic head did not mark as changed.
NO_CHANGE = -1


@dataclass(frozen=True)
class FusedChange:
    """Change layers of one batch; spatial shape ``(H, W)`` throughout.

    Attributes
    ----------
    change
        ``(B, 1, H, W)`` bool: agnostic change decision, ``p > 0.5``.
    class_before, class_after
        ``(B, 1, H, W)`` int64: class channel (argmax) on each date, everywhere.
    transition
        ``(B, 1, H, W)`` int64: ``class_before * K + class_after`` where changed, :data:`NO_CHANGE`
        elsewhere.
    target_change
        ``(B, 1, H, W)`` bool: change of a target class, ``change & (before in targets | after
        in targets)``.
    per_target
        ``(B, T, H, W)`` bool: for target ``t`` (in ``prompts.targets`` order),
        ``change & (before == t | after == t)``.
    unknown_change
        ``(B, 1, H, W)`` bool: changed, but both dates are background ("changed, class
        unknown"); all False without a background.
    soft_per_target
        ``(B, T, H, W)`` float: probability of a change into or out of target ``t``,
        ``p * (P_before(t) + P_after(t) - P_before(t) * P_after(t))``.
    num_classes
        ``K``, needed to decode transition codes.
    """

    change: torch.Tensor
    class_before: torch.Tensor
    class_after: torch.Tensor
    transition: torch.Tensor
    target_change: torch.Tensor
    per_target: torch.Tensor
    unknown_change: torch.Tensor
    soft_per_target: torch.Tensor
    num_classes: int


def transition_code(before: torch.Tensor, after: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``before * K + after``: the code of a class transition."""
    return before * num_classes + after


def decode_transition(code: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split transition codes into ``(before, after)``; :data:`NO_CHANGE` gives ``(-1, -1)``."""
    valid = code >= 0
    before = torch.where(valid, torch.div(code, num_classes, rounding_mode="floor"), NO_CHANGE)
    after = torch.where(valid, code % num_classes, NO_CHANGE)
    return before, after


def _check(change_prob: torch.Tensor, probs_before: torch.Tensor, probs_after: torch.Tensor, k: int) -> None:
    if change_prob.dim() != 4 or change_prob.shape[1] != 1:
        raise ModelError(
            f"change probability must be (B, 1, H, W), got {tuple(change_prob.shape)}; "
            "pass the probability of the 'changed' class only"
        )
    for name, probs in (("before", probs_before), ("after", probs_after)):
        if probs.dim() != 4 or probs.shape[1] != k:
            raise ModelError(
                f"class probabilities {name} must be (B, {k}, H, W) for the {k} prompt classes, "
                f"got {tuple(probs.shape)}; segment with the same PromptSet"
            )
        if probs.shape[0] != change_prob.shape[0] or probs.shape[2:] != change_prob.shape[2:]:
            raise ModelError(
                f"class probabilities {name} {tuple(probs.shape)} do not cover the same batch and "
                f"pixels as the change probability {tuple(change_prob.shape)}"
            )


def class_index(probs: torch.Tensor) -> torch.Tensor:
    """The argmax over the class channel of ``(B, K, H, W)`` probabilities, as ``(B, 1, H, W)`` int64.

    Ties go to the first class, as with ``argmax(dim=1)``; the channels are made the innermost
    dimension first, where torch reduces about three times faster than across a strided channel axis.
    """
    return probs.permute(0, 2, 3, 1).contiguous().argmax(dim=-1).unsqueeze(1)


def fuse(
    change_prob: torch.Tensor,
    probs_before: torch.Tensor,
    probs_after: torch.Tensor,
    prompts: PromptSet,
) -> FusedChange:
    """Gate the two dates' class maps with the agnostic change.

    Parameters
    ----------
    change_prob
        ``(B, 1, H, W)`` probability of change from the category-agnostic head.
    probs_before, probs_after
        ``(B, K, H, W)`` class probabilities of each date, channels as ``prompts``.
    prompts
        The classes and targets.

    Returns
    -------
    FusedChange

    Raises
    ------
    ModelError
        If the shapes disagree with each other or with ``prompts``.
    """
    k = prompts.num_classes
    _check(change_prob, probs_before, probs_after, k)
    change = change_prob > 0.5
    before = class_index(probs_before)
    after = class_index(probs_after)
    transition = torch.where(change, transition_code(before, after, k), torch.full_like(before, NO_CHANGE))

    targets = list(prompts.target_indices)
    ids = torch.tensor(targets, dtype=before.dtype, device=before.device).view(1, -1, 1, 1)
    per_target = change & ((before == ids) | (after == ids))
    target_change = per_target.any(dim=1, keepdim=True)

    bg = prompts.background_index
    unknown = change & (before == bg) & (after == bg) if bg is not None else torch.zeros_like(change)

    pb, pa = probs_before[:, targets], probs_after[:, targets]
    soft = change_prob * (pb + pa - pb * pa)
    return FusedChange(
        change=change,
        class_before=before,
        class_after=after,
        transition=transition,
        target_change=target_change,
        per_target=per_target,
        unknown_change=unknown,
        soft_per_target=soft,
        num_classes=k,
    )
