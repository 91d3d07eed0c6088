"""What an evaluation reports: per-pair counts, binary and semantic change scores, per-dataset tables.

:class:`EvaluationReport` is one model on one dataset (or pooled, :func:`pool_reports`: confusions
summed, never averaged); :class:`DatasetsReport` holds one report per dataset, the pooled one and
optionally a baseline's, with the IoU ratios. Both write themselves as JSON (NaN as ``null``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from seg2change_core.errors import DatasetError
from seg2change_core.metrics import BinaryScores, binary_scores

__all__ = ["DatasetsReport", "EvaluationReport", "PairScores", "SemanticReport", "pool_reports"]


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


@dataclass(frozen=True)
class PairScores:
    """Confusion counts of one pair (for finding the pairs a model gets wrong).

    Attributes
    ----------
    key
        ``dataset/name``.
    tp, fp, fn, tn
        Counts of scored pixels.
    """

    key: str
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def iou(self) -> float:
        """Change IoU of the pair (NaN when it has no change and none is predicted)."""
        den = self.tp + self.fp + self.fn
        return self.tp / den if den else math.nan


@dataclass(frozen=True)
class SemanticReport:
    """Semantic change scores (see :class:`~seg2change_core.metrics.SemanticChangeScores`).

    Attributes
    ----------
    classes
        Class indices averaged into the means.
    iou_c, f1_c
        Per-class change IoU and F1 (index = class), NaN where undefined.
    miou_c, mf1_c
        Their means over ``classes``.
    sek, fscd
        SECOND's separated kappa and semantic change F1.
    oracle_classes
        Whether the ground-truth class maps stood in for predicted ones.
    """

    classes: tuple[int, ...]
    iou_c: tuple[float, ...]
    f1_c: tuple[float, ...]
    miou_c: float
    mf1_c: float
    sek: float
    fscd: float
    oracle_classes: bool


class _JsonReport:
    """``to_json`` and ``save`` of a report that has ``to_dict``."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_json` to a file (parent folders are created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())


@dataclass(frozen=True)
class EvaluationReport(_JsonReport):
    """What :func:`evaluate` measured.

    Attributes
    ----------
    model
        Model name.
    pairs
        Number of pairs evaluated.
    scored_pixels
        Pixels scored (target not 255).
    scores
        Binary change scores over all pixels.
    semantic
        Semantic change scores, when the data has class maps.
    per_pair
        Counts per pair.
    settings
        How it was run (CVA fit mode, data folders, split part, ...).
    """

    model: str
    pairs: int
    scored_pixels: int
    scores: BinaryScores
    semantic: SemanticReport | None = None
    per_pair: tuple[PairScores, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def confusion(self) -> list[list[int]]:
        """``[[tn, fp], [fn, tp]]`` (rows truth, columns prediction)."""
        s = self.scores
        return [[s.tn, s.fp], [s.fn, s.tp]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (NaN becomes ``null``)."""
        scores = {k: (_finite(v) if isinstance(v, float) else v) for k, v in asdict(self.scores).items()}
        out: dict[str, Any] = {
            "model": self.model,
            "pairs": self.pairs,
            "scored_pixels": self.scored_pixels,
            "confusion": {"rows": "truth", "columns": "prediction", "matrix": self.confusion},
            "change": scores,
            "settings": self.settings,
            "per_pair": [
                {"key": p.key, "tp": p.tp, "fp": p.fp, "fn": p.fn, "tn": p.tn, "iou": _finite(p.iou)}
                for p in self.per_pair
            ],
        }
        if self.semantic is not None:
            sem = self.semantic
            out["semantic"] = {
                "classes": list(sem.classes),
                "iou_c": [_finite(v) for v in sem.iou_c],
                "f1_c": [_finite(v) for v in sem.f1_c],
                "miou_c": _finite(sem.miou_c),
                "mf1_c": _finite(sem.mf1_c),
                "sek": _finite(sem.sek),
                "fscd": _finite(sem.fscd),
                "oracle_classes": sem.oracle_classes,
            }
        return out


def pool_reports(
    reports: Sequence[EvaluationReport], *, model: str | None = None, settings: dict[str, Any] | None = None
) -> EvaluationReport:
    """One report over all pixels of several reports (their confusions summed, never averaged).

    Semantic scores are kept only when there is a single report (they cannot be summed).
    """
    if not reports:
        raise DatasetError("nothing to pool: no dataset was evaluated")
    tp = sum(r.scores.tp for r in reports)
    fp = sum(r.scores.fp for r in reports)
    fn = sum(r.scores.fn for r in reports)
    tn = sum(r.scores.tn for r in reports)
    return EvaluationReport(
        model=model or reports[0].model,
        pairs=sum(r.pairs for r in reports),
        scored_pixels=sum(r.scored_pixels for r in reports),
        scores=binary_scores(tp, fp, fn, tn),
        semantic=reports[0].semantic if len(reports) == 1 else None,
        per_pair=tuple(p for r in reports for p in r.per_pair),
        settings=dict(settings or {}),
    )


def _ratio(model: float, baseline: float) -> float:
    if math.isnan(model) or math.isnan(baseline) or baseline == 0:
        return math.nan
    return model / baseline


@dataclass(frozen=True)
class DatasetsReport(_JsonReport):
    """Scores of one model per dataset and pooled over all of them (see :func:`evaluate_datasets`).

    Attributes
    ----------
    model
        Model name.
    names
        Dataset names, in the order evaluated.
    reports
        One report per dataset (same order).
    pooled
        All pixels of all datasets together.
    baseline
        The same for a baseline on the same data, when one was run.
    """

    model: str
    names: tuple[str, ...]
    reports: tuple[EvaluationReport, ...]
    pooled: EvaluationReport
    baseline: DatasetsReport | None = None

    def report(self, name: str) -> EvaluationReport:
        """The report of one dataset."""
        return self.reports[self.names.index(name)]

    def iou_ratios(self) -> dict[str, float]:
        """Model IoU / baseline IoU per dataset and ``"pooled"`` (NaN where undefined or no baseline)."""
        if self.baseline is None:
            return {}
        out = {
            name: _ratio(r.scores.iou, self.baseline.report(name).scores.iou)
            for name, r in zip(self.names, self.reports, strict=True)
        }
        out["pooled"] = _ratio(self.pooled.scores.iou, self.baseline.pooled.scores.iou)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the pooled report's fields at the top, plus ``datasets`` (one entry per
        dataset, without per-pair counts, which the top level lists), ``baseline`` and
        ``iou_ratio``."""
        out = self.pooled.to_dict()
        out["model"] = self.model
        out["datasets"] = [
            {"dataset": name, **{k: v for k, v in r.to_dict().items() if k != "per_pair"}}
            for name, r in zip(self.names, self.reports, strict=True)
        ]
        if self.baseline is not None:
            base = self.baseline.to_dict()
            base.pop("per_pair", None)
            out["baseline"] = base
            out["iou_ratio"] = {k: _finite(v) for k, v in self.iou_ratios().items()}
        return out
