"""Dataset-level evaluation of change models on labelled pairs.

:func:`evaluate` runs a :class:`~seg2change_core.change_model.ChangeModel` over every pair of a
:class:`~seg2change_core.datasets.ChangeDetectionDataset`, decides change with
:func:`~seg2change_core.change_model.decide` (no hand-set threshold), and accumulates one
confusion over all pixels (:class:`~seg2change_core.metrics.BinaryConfusion`): change IoU, F1,
precision, recall, overall accuracy and kappa are computed from the totals, never averaged over
images. Pixels whose target is 255 are not scored.

Before scoring, :func:`evaluate` checks that the data's value scale (8-bit, reflectance, 16-bit DN)
is the one the model was made for (:func:`~seg2change_core.datasets.check_input_scale`); the CVA
baselines, whose normalisation is made from the data, are not checked.

Large frames
------------
A model with a ``tile_size`` (CACH: 504 px) scores larger images tile by tile, blending
overlapping tiles' probabilities (:func:`~seg2change_core.tiled.predict_tiled`), as the engine
runs a scene; smaller images are one forward pass. Baselines without a tile size see whole images.

Several datasets
----------------
:func:`evaluate_datasets` scores each dataset on its own and pools all pixels of all of them
(:class:`DatasetsReport`), optionally with a baseline on the same data for comparison.

The classical baselines
-----------------------
:func:`cva_for` builds the CVA baseline for a dataset (raw values brought to [0, 1] or reflectance,
no per-band standardisation), or with ``standardised=True`` the standardised CVA (each date's
bands standardised with that image's own statistics; see :mod:`seg2change_core.baselines`). Its Otsu threshold is fitted either **per image** (``cva_fit="image"``:
each pair gets its own threshold, the most favourable setting for CVA, which adapts to each
image's illumination) or **once on the dataset** (``cva_fit="dataset"``: one threshold from a pixel
sample of all pairs, as the tiled engine does per job). Both use no labels.

Semantic change
---------------
When the pairs carry class maps (``label_A/``, ``label_B/``), :func:`evaluate` also scores semantic
change with :class:`~seg2change_core.metrics.SemanticChangeConfusion` (class-union rule, per-class
``IoU_c``/``F1_c`` and their means ``mIoU_c``/``mF1_c``, SeK, Fscd). The predicted class of each date
comes from ``class_maps`` (e.g. a segmenter's argmax); without it the ground-truth class maps are
used, so the semantic scores then measure the change decision within each class.

Modules
-------
:mod:`~seg2change_core.evaluation.scoring` (:func:`evaluate`, :func:`predict_change`),
:mod:`~seg2change_core.evaluation.tally` (per-batch binary and semantic scores),
:mod:`~seg2change_core.evaluation.reports` (the report types), :mod:`~seg2change_core.evaluation.cva`
(the baselines for a dataset) and :mod:`~seg2change_core.evaluation.per_dataset`
(:func:`evaluate_datasets`); every public name is importable from this package.
"""

from seg2change_core.evaluation.cva import cva_for, fit_cva_on_dataset
from seg2change_core.evaluation.per_dataset import ModelFactory, evaluate_datasets
from seg2change_core.evaluation.reports import (
    DatasetsReport,
    EvaluationReport,
    PairScores,
    SemanticReport,
    pool_reports,
)
from seg2change_core.evaluation.scoring import CVAFitMode, check_dataset_scale, evaluate, predict_change
from seg2change_core.evaluation.tally import ChangeTally, ClassMapFn

__all__ = [
    "CVAFitMode",
    "ChangeTally",
    "ClassMapFn",
    "DatasetsReport",
    "EvaluationReport",
    "ModelFactory",
    "PairScores",
    "SemanticReport",
    "check_dataset_scale",
    "cva_for",
    "evaluate",
    "evaluate_datasets",
    "fit_cva_on_dataset",
    "pool_reports",
    "predict_change",
]
