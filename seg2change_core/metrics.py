"""Dataset-level change-detection metrics, accumulated batch by batch (NumPy).

Every accumulator sums integer confusion counts over all the pixels it is fed, and scores are
computed from the totals (dataset-level, never an average of per-image scores). Ground-truth
pixels equal to ``ignore_index`` (255) are skipped. A ratio whose denominator is 0 is undefined
and reported as NaN; means over classes skip NaN.

Binary maps treat any non-zero value other than ``ignore_index`` as "changed", so change-type
rasters can be passed as they are.

Semantic change
---------------
Per class ``c``, the class-union rule gives the change ground truth
``gt_change & (gt_before == c | gt_after == c)`` and the prediction likewise; their binary
confusion gives the class's change IoU and F1 (``IoU_c``, ``F1_c``), and ``mIoU_c``/``mF1_c`` are
their means over classes.

SeK (Yang et al., "Asymmetric Siamese Networks for Semantic Change Detection in Aerial Images",
the SECOND benchmark) is computed on the ``(K+1) x (K+1)`` confusion matrix ``Q`` (rows truth,
columns prediction) of per-date labels, accumulated over both dates, where label 0 is "no
change" and ``c + 1`` is class ``c`` inside the change mask:

* ``Q0`` is ``Q`` with the no-change/no-change count ``Q[0, 0]`` set to 0;
* ``kappa0 = (po - pe) / (1 - pe)`` on ``Q0``, with ``po = trace(Q0) / sum(Q0)`` and
  ``pe = sum_i rowsum_i(Q0) * colsum_i(Q0) / sum(Q0)**2`` (0 when ``Q0`` is empty or ``pe == 1``,
  as the reference code);
* ``IoU_bc = sum(Q[1:, 1:]) / (sum(Q) - Q[0, 0])``, the binary change IoU;
* ``SeK = kappa0 * exp(IoU_bc - 1)``, i.e. ``kappa0 * e**IoU_bc / e``.

``Fscd`` is the harmonic mean of ``trace(Q[1:, 1:]) / sum(Q[:, 1:])`` and
``trace(Q[1:, 1:]) / sum(Q[1:, :])``, also from SECOND.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from seg2change_core.errors import DatasetError

__all__ = [
    "IGNORE_INDEX",
    "BinaryConfusion",
    "BinaryScores",
    "ConfusionMatrix",
    "SemanticChangeConfusion",
    "SemanticChangeScores",
    "binary_scores",
]

#: Ground-truth value of pixels that are not scored.
IGNORE_INDEX = 255

F64 = NDArray[np.float64]


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _ratios(num: NDArray[np.int64], den: NDArray[np.int64]) -> F64:
    with np.errstate(invalid="ignore", divide="ignore"):
        out: F64 = np.where(den > 0, num / np.maximum(den, 1), np.nan)
    return out


def _kappa(matrix: NDArray[np.int64]) -> float:
    """Cohen's kappa of a confusion matrix; NaN when undefined."""
    n = float(matrix.sum())
    if n == 0:
        return math.nan
    po = float(np.trace(matrix)) / n
    pe = float((matrix.sum(0).astype(np.float64) * matrix.sum(1)).sum()) / n**2
    return _ratio(po - pe, 1 - pe)


@dataclass(frozen=True)
class BinaryScores:
    """Scores of a binary (change / no change) confusion.

    Attributes
    ----------
    iou, f1, precision, recall
        Of the positive (changed) class.
    oa
        Overall accuracy.
    kappa
        Cohen's kappa.
    tp, fp, fn, tn
        The counts they come from.
    """

    iou: float
    f1: float
    precision: float
    recall: float
    oa: float
    kappa: float
    tp: int
    fp: int
    fn: int
    tn: int


def binary_scores(tp: int, fp: int, fn: int, tn: int) -> BinaryScores:
    """Scores from binary confusion counts (NaN where a denominator is 0)."""
    matrix = np.array([[tn, fp], [fn, tp]], dtype=np.int64)
    return BinaryScores(
        iou=_ratio(tp, tp + fp + fn),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        oa=_ratio(tp + tn, tp + fp + fn + tn),
        kappa=_kappa(matrix),
        tp=int(tp),
        fp=int(fp),
        fn=int(fn),
        tn=int(tn),
    )


def _arrays(*arrays: ArrayLike) -> list[NDArray[np.int64]]:
    out = [np.asarray(a).astype(np.int64, copy=False) for a in arrays]
    shape = out[0].shape
    if any(a.shape != shape for a in out):
        raise DatasetError(
            f"prediction and ground truth shapes differ: {[a.shape for a in out]}; "
            "they must cover the same pixels"
        )
    return out


class BinaryConfusion:
    """Dataset-level binary change confusion.

    Parameters
    ----------
    ignore_index
        Ground-truth value of pixels to skip.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        self.ignore_index = ignore_index
        self.tp = self.fp = self.fn = self.tn = 0

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add a batch: ``pred`` and ``target`` of the same shape, non-zero meaning changed."""
        p, t = _arrays(pred, target)
        valid = t != self.ignore_index
        p, t = p[valid] != 0, t[valid] != 0
        self.tp += int(np.count_nonzero(p & t))
        self.fp += int(np.count_nonzero(p & ~t))
        self.fn += int(np.count_nonzero(~p & t))
        self.tn += int(np.count_nonzero(~p & ~t))

    @property
    def matrix(self) -> NDArray[np.int64]:
        """``[[tn, fp], [fn, tp]]`` (rows truth, columns prediction)."""
        return np.array([[self.tn, self.fp], [self.fn, self.tp]], dtype=np.int64)

    def scores(self) -> BinaryScores:
        """Change IoU, F1, precision, recall, OA and kappa of everything added so far."""
        return binary_scores(self.tp, self.fp, self.fn, self.tn)


class ConfusionMatrix:
    """Dataset-level multi-class confusion matrix (rows truth, columns prediction).

    Parameters
    ----------
    num_classes
        Labels are ``0 .. num_classes - 1``.
    ignore_index
        Ground-truth value of pixels to skip.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise DatasetError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix: NDArray[np.int64] = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add a batch of label maps of the same shape.

        Raises
        ------
        DatasetError
            If a label (other than an ignored ground truth) lies outside ``0 .. num_classes - 1``.
        """
        p, t = _arrays(pred, target)
        valid = t != self.ignore_index
        p, t = p[valid], t[valid]
        k = self.num_classes
        for name, a in (("prediction", p), ("ground truth", t)):
            if a.size and (a.min() < 0 or a.max() >= k):
                raise DatasetError(
                    f"{name} holds label {int(a.max() if a.max() >= k else a.min())} outside 0..{k - 1}; "
                    f"check num_classes and the ignore value ({self.ignore_index})"
                )
        self.matrix += np.bincount(t * k + p, minlength=k * k).reshape(k, k)

    def iou(self) -> F64:
        """Per-class IoU ``(K,)``."""
        tp = np.diag(self.matrix)
        return _ratios(tp, self.matrix.sum(0) + self.matrix.sum(1) - tp)

    def f1(self) -> F64:
        """Per-class F1 ``(K,)``."""
        tp = np.diag(self.matrix)
        return _ratios(2 * tp, self.matrix.sum(0) + self.matrix.sum(1))

    def precision(self) -> F64:
        """Per-class precision ``(K,)``."""
        return _ratios(np.diag(self.matrix), self.matrix.sum(0))

    def recall(self) -> F64:
        """Per-class recall ``(K,)``."""
        return _ratios(np.diag(self.matrix), self.matrix.sum(1))

    def miou(self) -> float:
        """Mean IoU over classes with a defined IoU."""
        return _nanmean(self.iou())

    def oa(self) -> float:
        """Overall accuracy."""
        return _ratio(float(np.trace(self.matrix)), float(self.matrix.sum()))

    def kappa(self) -> float:
        """Cohen's kappa."""
        return _kappa(self.matrix)


def _nanmean(values: F64) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


@dataclass(frozen=True)
class SemanticChangeScores:
    """Semantic change scores (see the module docstring for definitions).

    Attributes
    ----------
    iou_c, f1_c
        ``(K,)`` per-class change IoU and F1 under the class-union rule.
    miou_c, mf1_c
        Their means over the chosen classes (NaN entries skipped).
    sek
        Separated kappa of SECOND.
    kappa_n0
        The kappa on the confusion without its no-change/no-change entry.
    fscd
        Semantic change F1 of SECOND.
    binary
        Binary change scores.
    """

    iou_c: F64
    f1_c: F64
    miou_c: float
    mf1_c: float
    sek: float
    kappa_n0: float
    fscd: float
    binary: BinaryScores


class SemanticChangeConfusion:
    """Dataset-level semantic change confusion: per-class union counts and SECOND's matrix.

    Parameters
    ----------
    num_classes
        ``K``; class maps hold ``0 .. K - 1``.
    ignore_index
        A pixel is skipped where the ground-truth change is ``ignore_index``; a changed pixel
        is also skipped (for the semantic scores only) where either ground-truth class is.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.binary = BinaryConfusion(ignore_index)
        # The per-date matrix of SECOND: label 0 no change, c + 1 class c within the change.
        self.second = ConfusionMatrix(num_classes + 1, ignore_index)
        self.tp = np.zeros(num_classes, dtype=np.int64)
        self.fp = np.zeros(num_classes, dtype=np.int64)
        self.fn = np.zeros(num_classes, dtype=np.int64)
        self.tn = np.zeros(num_classes, dtype=np.int64)

    def update(
        self,
        pred_change: ArrayLike,
        pred_before: ArrayLike,
        pred_after: ArrayLike,
        gt_change: ArrayLike,
        gt_before: ArrayLike,
        gt_after: ArrayLike,
    ) -> None:
        """Add a batch: six maps of the same shape (changes non-zero = changed, classes 0..K-1)."""
        pc, pb, pa, gc, gb, ga = _arrays(pred_change, pred_before, pred_after, gt_change, gt_before, gt_after)
        ign = self.ignore_index
        self.binary.update(pc, gc)
        changed = (gc != 0) & (gc != ign)
        valid = (gc != ign) & ~(changed & ((gb == ign) | (ga == ign)))
        pc, pb, pa = pc[valid] != 0, pb[valid], pa[valid]
        changed, gb, ga = changed[valid], gb[valid], ga[valid]
        k = self.num_classes
        for name, a in (
            ("pred_before", pb),
            ("pred_after", pa),
            ("gt_before", gb[changed]),
            ("gt_after", ga[changed]),
        ):
            if a.size and (a.min() < 0 or a.max() >= k):
                raise DatasetError(f"{name} holds classes outside 0..{k - 1}; check num_classes")
        for c in range(k):
            g = changed & ((gb == c) | (ga == c))
            p = pc & ((pb == c) | (pa == c))
            self.tp[c] += np.count_nonzero(p & g)
            self.fp[c] += np.count_nonzero(p & ~g)
            self.fn[c] += np.count_nonzero(~p & g)
            self.tn[c] += np.count_nonzero(~p & ~g)
        for pred_cls, gt_cls in ((pb, gb), (pa, ga)):
            self.second.update(np.where(pc, pred_cls + 1, 0), np.where(changed, gt_cls + 1, 0))

    def scores(self, classes: Sequence[int] | None = None) -> SemanticChangeScores:
        """Scores of everything added so far.

        Parameters
        ----------
        classes
            Classes averaged into ``miou_c``/``mf1_c`` (e.g. all but the background); all by
            default.
        """
        iou = _ratios(self.tp, self.tp + self.fp + self.fn)
        f1 = _ratios(2 * self.tp, 2 * self.tp + self.fp + self.fn)
        chosen = list(range(self.num_classes)) if classes is None else list(classes)
        q = self.second.matrix
        q0 = q.copy()
        q0[0, 0] = 0
        kappa_n0 = _kappa(q0)
        if math.isnan(kappa_n0):
            kappa_n0 = 0.0  # as SECOND's reference evaluation
        iou_bc = _ratio(float(q[1:, 1:].sum()), float(q.sum() - q[0, 0]))
        sek = kappa_n0 * math.exp(iou_bc - 1) if not math.isnan(iou_bc) else math.nan
        hits = float(np.trace(q[1:, 1:]))
        precision, recall = _ratio(hits, float(q[:, 1:].sum())), _ratio(hits, float(q[1:, :].sum()))
        fscd = 0.0 if precision == 0 and recall == 0 else _ratio(2 * precision * recall, precision + recall)
        return SemanticChangeScores(
            iou_c=iou,
            f1_c=f1,
            miou_c=_nanmean(iou[chosen]),
            mf1_c=_nanmean(f1[chosen]),
            sek=sek,
            kappa_n0=kappa_n0,
            fscd=fscd,
            binary=self.binary.scores(),
        )
