"""Per-batch scoring: the binary confusion, per-pair counts and semantic change of predicted batches.

:class:`ChangeTally` is fed one batch at a time (its binary change prediction beside the batch's
labels) and turned into an :class:`~seg2change_core.evaluation.reports.EvaluationReport` at the
end. Pixels whose target is 255 are not scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from seg2change_core.datasets import Batch, ChangeDetectionDataset
from seg2change_core.evaluation.reports import EvaluationReport, PairScores, SemanticReport
from seg2change_core.metrics import BinaryConfusion, SemanticChangeConfusion

__all__ = ["ChangeTally", "ClassMapFn"]

ClassMapFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps a raw ``(B, bands, H, W)`` batch to ``(B, H, W)`` int64 class indices."""


def _num_classes(dataset: ChangeDetectionDataset) -> int:
    """One more than the largest class index (other than 255) in the class maps."""
    largest = 0
    for index in range(len(dataset.pairs)):
        pair = dataset.pair(index)
        for cmap in (pair.class_before, pair.class_after):
            if cmap is None:
                continue
            values = np.asarray(cmap)
            values = values[values != 255]
            if values.size:
                largest = max(largest, int(values.max()))
    return largest + 1


@dataclass
class ChangeTally:
    """Scores accumulated over the batches of one dataset.

    Attributes
    ----------
    binary
        Confusion of change over all scored pixels.
    semantic
        Semantic change confusion, when the data has class maps (else ``None``).
    num_classes
        Classes in the class maps (0 without them).
    per_pair
        Counts per pair, in the order fed.
    pixels
        Pixels scored.
    """

    binary: BinaryConfusion = field(default_factory=BinaryConfusion)
    semantic: SemanticChangeConfusion | None = None
    num_classes: int = 0
    per_pair: list[PairScores] = field(default_factory=list)
    pixels: int = 0

    @classmethod
    def for_dataset(cls, dataset: ChangeDetectionDataset) -> ChangeTally:
        """An empty tally; semantic change is scored when the dataset's first pair has class maps."""
        first = dataset[0]
        if first["class_before"] is None or first["class_after"] is None:
            return cls()
        num_classes = _num_classes(dataset)
        return cls(semantic=SemanticChangeConfusion(num_classes), num_classes=num_classes)

    def add(self, batch: Batch, pred: NDArray[np.bool_], class_maps: ClassMapFn | None) -> None:
        """Score one batch's binary change prediction ``(B, H, W)``.

        ``class_maps`` predicts each date's classes for the semantic scores; ``None`` takes the
        ground-truth class maps.
        """
        target = batch.target.numpy()
        self.binary.update(pred, target)
        for key, p, t in zip(batch.keys, pred, target, strict=True):
            one = BinaryConfusion()
            one.update(p, t)
            self.per_pair.append(PairScores(key, one.tp, one.fp, one.fn, one.tn))
        self.pixels += int(np.count_nonzero(target != 255))
        if self.semantic is None:
            return
        assert batch.class_before is not None and batch.class_after is not None
        if class_maps is None:
            pred_before, pred_after = batch.class_before, batch.class_after
        else:
            with torch.no_grad():
                pred_before, pred_after = class_maps(batch.before), class_maps(batch.after)
        self.semantic.update(
            pred,
            pred_before.numpy(),
            pred_after.numpy(),
            target,
            batch.class_before.numpy(),
            batch.class_after.numpy(),
        )

    def semantic_report(self, classes: Sequence[int] | None, *, oracle: bool) -> SemanticReport | None:
        """The semantic scores averaged over ``classes`` (default all), or ``None`` without class maps."""
        if self.semantic is None:
            return None
        chosen = tuple(range(self.num_classes)) if classes is None else tuple(classes)
        sem = self.semantic.scores(chosen)
        return SemanticReport(
            classes=chosen,
            iou_c=tuple(float(v) for v in sem.iou_c),
            f1_c=tuple(float(v) for v in sem.f1_c),
            miou_c=sem.miou_c,
            mf1_c=sem.mf1_c,
            sek=sem.sek,
            fscd=sem.fscd,
            oracle_classes=oracle,
        )

    def report(
        self,
        model: str,
        pairs: int,
        settings: dict[str, Any],
        *,
        semantic_classes: Sequence[int] | None,
        oracle_classes: bool,
    ) -> EvaluationReport:
        """The report of what was tallied over ``pairs`` pairs."""
        return EvaluationReport(
            model=model,
            pairs=pairs,
            scored_pixels=self.pixels,
            scores=self.binary.scores(),
            semantic=self.semantic_report(semantic_classes, oracle=oracle_classes),
            per_pair=tuple(self.per_pair),
            settings=settings,
        )
