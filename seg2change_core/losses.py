"""Losses of the CACH change model: the reference's deep-supervision loss and a dice term.

The reference loss (:func:`cach_loss`), with targets 0 (unchanged), 1 (changed) and 255 (ignored)::

    L = 0.8 * CE(change) + 0.1 * (CE(aux1) + CE(aux2) + CE(aux3)) + 0.1 * L_sim
    L_sim = mean over unchanged, non-ignored pixels of 1 - cos(softmax(outA / 3), softmax(outB / 3))

(cosine over the class channel). Trained from scratch on a few hundred tiles where a few percent of
the pixels changed, cross-entropy alone lets a model fall to "nothing changed" for whole epochs;
:attr:`LossWeights.dice` adds ``dice * (1 - soft Dice of the changed class)`` of the main output
(over the whole batch), which no constant prediction can satisfy. The weights, the temperature,
the dice weight and a weight of the "changed" class in every cross-entropy term are set by
:class:`LossWeights`; its defaults are the reference's. A batch without any scored pixel
contributes zero loss (and zero gradient), not NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from seg2change_core.datasets import IGNORE_INDEX
from seg2change_core.errors import ModelError

__all__ = ["LossParts", "LossWeights", "cach_loss", "dice_loss", "similarity_loss"]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (the reference's by default).

    Attributes
    ----------
    change
        Weight of the main change cross-entropy.
    aux
        Weight of each of the three deep-supervision cross-entropies.
    similarity
        Weight of the similarity loss of the two single-date outputs on unchanged pixels.
    temperature
        Softmax temperature of the similarity loss.
    changed_class_weight
        Cross-entropy weight of the "changed" class relative to "unchanged" (1 in the reference).
    dice
        Weight of the soft-Dice term of the main output (0 in the reference).
    """

    change: float = 0.8
    aux: float = 0.1
    similarity: float = 0.1
    temperature: float = 3.0
    changed_class_weight: float = 1.0
    dice: float = 0.0


@dataclass(frozen=True)
class LossParts:
    """The total loss and its parts (unweighted parts, weighted total)."""

    total: torch.Tensor
    change: torch.Tensor
    aux: torch.Tensor
    similarity: torch.Tensor
    dice: torch.Tensor


def _cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int
) -> torch.Tensor:
    if not bool((target != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index)


def similarity_loss(
    out_a: torch.Tensor,
    out_b: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = 3.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Mean ``1 - cos`` of the tempered class softmaxes of the two dates on unchanged pixels.

    Parameters
    ----------
    out_a, out_b
        ``(B, K, H, W)`` logits decoded from each date alone.
    target
        ``(B, H, W)`` change target; pixels equal to 0 are the unchanged ones used.
    temperature
        Logits are divided by it before the softmax.
    ignore_index
        Target value of ignored pixels (never counted as unchanged).

    Returns
    -------
    torch.Tensor
        Scalar; 0 (with a zero gradient) when no pixel is unchanged.
    """
    prob_a = torch.softmax(out_a / temperature, dim=1)
    prob_b = torch.softmax(out_b / temperature, dim=1)
    distance = 1.0 - F.cosine_similarity(prob_a, prob_b, dim=1)
    unchanged = (target == 0) & (target != ignore_index)
    if not bool(unchanged.any()):
        return distance.sum() * 0.0
    return distance[unchanged].mean()


def dice_loss(
    logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """``1 - `` soft Dice of the "changed" class over all scored pixels of a batch.

    Parameters
    ----------
    logits
        ``(B, 2, H, W)`` change logits.
    target
        ``(B, H, W)`` target: 0, 1 or ``ignore_index``.
    ignore_index
        Target value left out.

    Returns
    -------
    torch.Tensor
        Scalar in ``[0, 1)``; with a smoothing of 1 pixel, so a batch without change asks for
        probabilities near 0 instead of being undefined. 0 (zero gradient) without scored pixels.
    """
    scored = target != ignore_index
    if not bool(scored.any()):
        return logits.sum() * 0.0
    probability = torch.softmax(logits, dim=1)[:, 1][scored]
    truth = (target[scored] == 1).to(probability.dtype)
    overlap = (probability * truth).sum()
    return 1.0 - (2.0 * overlap + 1.0) / (probability.sum() + truth.sum() + 1.0)


def cach_loss(
    outputs: Sequence[torch.Tensor],
    target: torch.Tensor,
    weights: LossWeights | None = None,
    *,
    ignore_index: int = IGNORE_INDEX,
) -> LossParts:
    """The reference training loss of the six CACH outputs.

    Parameters
    ----------
    outputs
        ``(change, aux1, aux2, aux3, outA, outB)`` logits, each ``(B, 2, H, W)``.
    target
        ``(B, H, W)`` int64 target: 0, 1 or ``ignore_index``.
    weights
        Term weights; default :class:`LossWeights` (the reference's).
    ignore_index
        Target value not trained on.

    Returns
    -------
    LossParts
        ``total = w.change * change + w.aux * aux + w.similarity * similarity + w.dice * dice``
        where ``aux`` is the sum of the three deep-supervision cross-entropies.
    """
    w = weights or LossWeights()
    if len(outputs) != 6:
        raise ModelError(f"cach_loss takes the six CACH outputs, got {len(outputs)}")
    change, aux1, aux2, aux3, out_a, out_b = outputs
    class_weight = (
        None
        if w.changed_class_weight == 1.0
        else torch.tensor([1.0, w.changed_class_weight], dtype=change.dtype, device=change.device)
    )
    ce_change = _cross_entropy(change, target, class_weight, ignore_index)
    ce_aux = sum(
        (_cross_entropy(a, target, class_weight, ignore_index) for a in (aux1, aux2, aux3)),
        start=torch.zeros((), dtype=change.dtype, device=change.device),
    )
    sim = similarity_loss(out_a, out_b, target, temperature=w.temperature, ignore_index=ignore_index)
    total = w.change * ce_change + w.aux * ce_aux + w.similarity * sim
    dice = dice_loss(change, target, ignore_index=ignore_index) if w.dice else ce_change.detach() * 0.0
    total = total + w.dice * dice
    return LossParts(total, ce_change.detach(), ce_aux.detach(), sim.detach(), dice.detach())
