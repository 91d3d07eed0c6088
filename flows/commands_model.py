"""Model commands of the ``seg2change`` CLI: ``evaluate`` and ``make-demo-checkpoint``.

``train`` lives in :mod:`flows.commands_train`.

Plain functions with typer annotations; :mod:`flows.cli` registers them on the app. Heavy
modules (torch, the models, the synthetic generator) are imported inside the functions, so the
CLI starts fast. Errors of the project's tree print their message and exit with status 2.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from flows.console import error_text, make_console, styled
from seg2change_core.errors import Seg2ChangeError

if TYPE_CHECKING:
    import warnings

    from seg2change_core.datasets import ChangeDetectionDataset, LabelEncoding, PairSource
    from seg2change_core.evaluation import DatasetsReport, EvaluationReport, ModelFactory

__all__ = ["EvaluateOptions", "evaluate", "make_demo_checkpoint", "run_evaluate"]

console = make_console(stderr=True)
out_console = make_console()


def _fail(exc: Seg2ChangeError) -> None:
    console.print(error_text(exc))
    raise typer.Exit(code=2)


def _bands(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(b.strip() for b in text.split(",") if b.strip())
    return names or None


LABEL_VALUES_HELP = (
    "How the labels encode change, e.g. 'unchanged=1,changed=2' (OSCD .tif) or "
    "'unchanged=0,changed=255,ignore=128'; several values as changed=1/2. Default: detected per "
    "dataset folder (0/255, 0/1, 1/2, or 0/255 with 128 not labelled); ambiguous labels are refused."
)


def _label_encoding(text: str | None) -> LabelEncoding | None:
    from seg2change_core.datasets import LabelEncoding

    return None if text is None else LabelEncoding.parse(text)


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _print_report(report: EvaluationReport) -> None:
    s = report.scores
    table = Table(title=f"{report.model}: {report.pairs} pairs, {report.scored_pixels:,} pixels scored")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in (
        ("change IoU", s.iou),
        ("F1", s.f1),
        ("precision", s.precision),
        ("recall", s.recall),
        ("overall accuracy", s.oa),
        ("kappa", s.kappa),
    ):
        table.add_row(name, _fmt(value))
    table.add_row("TP / FP", f"{s.tp:,} / {s.fp:,}")
    table.add_row("FN / TN", f"{s.fn:,} / {s.tn:,}")
    out_console.print(table)
    if report.semantic is not None:
        sem = report.semantic
        per_class = Table(
            title="semantic change (class-union rule"
            + (", ground-truth classes)" if sem.oracle_classes else ")")
        )
        per_class.add_column("class", justify="right")
        per_class.add_column("IoU_c", justify="right")
        per_class.add_column("F1_c", justify="right")
        for c in sem.classes:
            per_class.add_row(str(c), _fmt(sem.iou_c[c]), _fmt(sem.f1_c[c]))
        per_class.add_row("mean", _fmt(sem.miou_c), _fmt(sem.mf1_c))
        out_console.print(per_class)
        out_console.print(f"SeK {_fmt(sem.sek)}, Fscd {_fmt(sem.fscd)}")


def _print_datasets(result: DatasetsReport, baseline_label: str) -> None:
    """One row per dataset and a pooled row; the baseline's IoU and the ratio beside them."""
    base = result.baseline
    table = Table(title=f"{result.model}: change per dataset and pooled over all pixels")
    table.add_column("dataset")
    for name in ("pairs", "pixels scored", "IoU", "F1", "precision", "recall"):
        table.add_column(name, justify="right")
    if base is not None:
        table.add_column(f"IoU {baseline_label}", justify="right")
        table.add_column("IoU ratio", justify="right")
    ratios = result.iou_ratios()
    rows = [*zip(result.names, result.reports, strict=True), ("pooled", result.pooled)]
    for index, (name, report) in enumerate(rows):
        s = report.scores
        cells = [name, str(report.pairs), f"{report.scored_pixels:,}", _fmt(s.iou), _fmt(s.f1)]
        cells += [_fmt(s.precision), _fmt(s.recall)]
        if base is not None:
            theirs = base.pooled if name == "pooled" else base.report(name)
            cells += [_fmt(theirs.scores.iou), _fmt(ratios[name])]
        table.add_row(*cells, end_section=index == len(rows) - 2)
    out_console.print(table)  # not a terminal: full width (see flows.console)


MODEL_HELP = (
    "A seg2change checkpoint, or a classical baseline: 'cva' (change vector analysis on raw "
    "differences, Otsu threshold) or 'cva-std' (standardised CVA: each date's bands standardised "
    "with that image's own mean and std, then CVA and Otsu)."
)
BASELINES = ("cva", "cva-std")


class _PlainProgress:
    """Progress as plain lines (rich bars are invisible when the output is not a terminal)."""

    def __init__(self) -> None:
        self.last: tuple[str, str] | None = None
        self.shown = -1

    def __call__(self, model: str, dataset: str, done: int, total: int) -> None:
        if (model, dataset) != self.last:
            self.last, self.shown = (model, dataset), -1
        step = max(1, total // 10)
        if done == total or done // step != self.shown // step:
            self.shown = done
            print(f"evaluating {model} on {dataset}: {done}/{total} pairs", file=sys.stderr, flush=True)


EvalDataDirs = Annotated[
    list[Path],
    typer.Argument(help="Dataset folder(s): A/, B/ and label/ folders, OSCD roots or OSCD city folders."),
]
ModelSource = Annotated[str, typer.Option("--model", help=MODEL_HELP)]
BaselineName = Annotated[
    str | None,
    typer.Option(
        help="Baseline scored on the same data beside the model, with the IoU ratio: 'cva-std', "
        "'cva' or 'none'. Default: cva-std for a checkpoint, none for a baseline."
    ),
]
EvalBackboneWeights = Annotated[
    Path | None, typer.Option(help="Backbone weights for a checkpoint saved without them.")
]
EvalSplit = Annotated[Path | None, typer.Option(help="Split file (JSON); evaluate only its --part.")]
SplitPart = Annotated[str, typer.Option(help="Part of the split to evaluate: test, val or train.")]
CVAFit = Annotated[
    str, typer.Option(help="CVA threshold: 'image' (Otsu per pair) or 'dataset' (one for all).")
]
EvalIgnoreValue = Annotated[
    int | None, typer.Option(help="Raw label value meaning 'not labelled' (e.g. 128); not scored.")
]
EvalLabelValues = Annotated[str | None, typer.Option(help=LABEL_VALUES_HELP)]
EvalBands = Annotated[
    str | None,
    typer.Option(
        help="Comma-separated bands to use, in order: names where the data names its bands (OSCD: "
        "red,green,blue or B04,B03,B02), else red,green,blue (3 bands) or b1,b2,... by position. "
        "A checkpoint gets them by position; without --bands it takes its own bands by name from "
        "named data and all bands from unnamed data."
    ),
]
Tiled = Annotated[bool, typer.Option(help="Score frames larger than the model's tile tile by tile, blended.")]
TileOverlap = Annotated[
    int | None, typer.Option(help="Overlap of neighbouring tiles in pixels (default a quarter tile).")
]
ReportFile = Annotated[Path | None, typer.Option(help="Write the JSON report here.")]
EvalProgress = Annotated[bool, typer.Option(help="Show progress (plain lines when not a terminal).")]


@dataclass(frozen=True)
class EvaluateOptions:
    """What ``seg2change evaluate`` was asked for (see :func:`evaluate` for each option).

    Attributes
    ----------
    data_dirs
        Dataset folders.
    model
        A checkpoint path or a baseline name (:data:`BASELINES`).
    baseline
        Baseline scored beside the model (``None``: cva-std for a checkpoint, none for a baseline).
    backbone_weights, split, part, cva_fit, ignore_value, label_values, bands, tiled, tile_overlap
        How the model is loaded, which pairs are read and how they are scored.
    report, progress
        Where the JSON report goes, and whether progress is shown.
    """

    data_dirs: tuple[Path, ...]
    model: str
    baseline: str | None = None
    backbone_weights: Path | None = None
    split: Path | None = None
    part: str = "test"
    cva_fit: str = "image"
    ignore_value: int | None = None
    label_values: str | None = None
    bands: str | None = None
    tiled: bool = True
    tile_overlap: int | None = None
    report: Path | None = None
    progress: bool = True


def evaluate(
    data_dirs: EvalDataDirs,
    model: ModelSource,
    baseline: BaselineName = None,
    backbone_weights: EvalBackboneWeights = None,
    split: EvalSplit = None,
    part: SplitPart = "test",
    cva_fit: CVAFit = "image",
    ignore_value: EvalIgnoreValue = None,
    label_values: EvalLabelValues = None,
    bands: EvalBands = None,
    tiled: Tiled = True,
    tile_overlap: TileOverlap = None,
    report: ReportFile = None,
    progress: EvalProgress = True,
) -> None:
    """Score a change model (or a CVA baseline) per dataset and pooled: IoU, F1, precision, recall."""
    run_evaluate(
        EvaluateOptions(
            tuple(data_dirs),
            model,
            baseline,
            backbone_weights,
            split,
            part,
            cva_fit,
            ignore_value,
            label_values,
            bands,
            tiled,
            tile_overlap,
            report,
            progress,
        )  # fmt: skip
    )


@dataclass(frozen=True)
class _Plan:
    """What to score: the datasets, the model and baseline for each, and the settings to record."""

    datasets: list[tuple[str, ChangeDetectionDataset]]
    model_for: ModelFactory
    baseline_for: ModelFactory | None
    baseline: str
    settings: dict[str, Any]


def run_evaluate(options: EvaluateOptions) -> None:
    """Score what ``options`` ask for, print the tables and write the report.

    Warnings raised while scoring are printed after the progress display is gone.

    Raises
    ------
    typer.Exit
        With status 2 for an error of the project's tree (its message is printed).
    """
    import warnings

    caught: list[warnings.WarningMessage] = []
    try:
        plan = _plan(options)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = _score(plan, options)
    except Seg2ChangeError as exc:
        _print_warnings(caught)
        _fail(exc)
        return
    _print_warnings(caught)
    _print_datasets(result, plan.baseline)
    _print_report(result.pooled)
    if options.report is not None:
        result.save(options.report)
        out_console.print(styled("report written to ", (str(options.report), "bold")))


def _print_warnings(caught: Sequence[warnings.WarningMessage]) -> None:
    for warning in caught:
        console.print(error_text(warning.message, label="warning:", style="yellow"))


def _plan(options: EvaluateOptions) -> _Plan:
    """Check the choices, read and group the pairs, load the model: everything before scoring."""
    from seg2change_core.datasets import ChangeDetectionDataset
    from seg2change_core.errors import DatasetError

    encoding = _label_encoding(options.label_values)
    if options.cva_fit not in ("image", "dataset"):
        raise DatasetError(f"unknown --cva-fit {options.cva_fit!r}; choose image or dataset")
    baseline = options.baseline or ("none" if options.model in BASELINES else "cva-std")
    if baseline not in (*BASELINES, "none"):
        raise DatasetError(f"unknown --baseline {options.baseline!r}; choose cva-std, cva or none")
    groups = _pairs_by_dataset(options, encoding)
    requested = _bands(options.bands)
    groups, model_for = _model_for(options, groups, requested)
    datasets = [
        (name, ChangeDetectionDataset(group, ignore_value=options.ignore_value, label_encoding=encoding))
        for name, group in groups.items()
    ]
    settings = {
        "data": [str(d) for d in options.data_dirs],
        "model_source": options.model,
        "split": None if options.split is None else str(options.split),
        "part": options.part if options.split is not None else "all",
        "ignore_value": options.ignore_value,
        "label_values": None if encoding is None else encoding.describe(),
        "bands": None if requested is None else list(requested),
        "cva_fit": options.cva_fit,
    }
    baseline_for = None if baseline == "none" else _baseline_factory(baseline)
    return _Plan(datasets, model_for, baseline_for, baseline, settings)


def _pairs_by_dataset(
    options: EvaluateOptions, encoding: LabelEncoding | None
) -> dict[str, list[PairSource]]:
    """The pairs of the data folders (the split's part, when a split is given), by dataset."""
    from seg2change_core.datasets import Split, dataset_of, scan_datasets
    from seg2change_core.errors import DatasetError

    pairs: list[PairSource] = scan_datasets(
        options.data_dirs, label_encoding=encoding, ignore_value=options.ignore_value
    )
    if options.split is not None:
        part = options.part
        if part not in ("train", "val", "test"):
            raise DatasetError(f"unknown --part {part!r}; choose test, val or train")
        pairs = Split.load(options.split).select(pairs, part)  # type: ignore[arg-type]
        if not pairs:
            raise DatasetError(f"the split's {part} part is empty; choose another --part")
    groups: dict[str, list[PairSource]] = {}
    for pair in pairs:
        groups.setdefault(dataset_of(pair), []).append(pair)
    return groups


def _model_for(
    options: EvaluateOptions, groups: dict[str, list[PairSource]], requested: tuple[str, ...] | None
) -> tuple[dict[str, list[PairSource]], ModelFactory]:
    """The model factory, and the groups with the bands it takes (a checkpoint's, or those requested)."""
    from seg2change_core.checkpoints import load_change_model
    from seg2change_core.datasets import bands_for_model, select_bands

    if options.model in BASELINES:
        if requested is not None:
            groups = {name: select_bands(group, requested) for name, group in groups.items()}
        return groups, _baseline_factory(options.model)
    loaded = load_change_model(options.model, backbone_weights=options.backbone_weights)
    groups = {name: bands_for_model(group, loaded.bands, requested) for name, group in groups.items()}
    return groups, lambda _name, _data: loaded


def _baseline_factory(kind: str) -> ModelFactory:
    from seg2change_core.evaluation import cva_for

    return lambda _name, data: cva_for(data, standardised=kind == "cva-std")


def _score(plan: _Plan, options: EvaluateOptions) -> DatasetsReport:
    """Run the evaluation, with rich bars on a terminal and plain lines otherwise."""
    from rich.progress import Progress

    from seg2change_core.evaluation import evaluate_datasets

    def score(on_progress: Callable[[str, str, int, int], None] | None) -> DatasetsReport:
        return evaluate_datasets(
            plan.datasets,
            plan.model_for,
            baseline_for=plan.baseline_for,
            cva_fit=options.cva_fit,  # type: ignore[arg-type]
            tiled=options.tiled,
            tile_overlap=options.tile_overlap,
            on_progress=on_progress,
            settings=plan.settings,
        )

    if not (options.progress and console.is_terminal):
        return score(_PlainProgress() if options.progress else None)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("evaluating", total=1)

        def show(model_name: str, dataset: str, done: int, total: int) -> None:
            bar.update(task, description=f"{model_name} on {dataset}", completed=done, total=total)

        return score(show)


def make_demo_checkpoint(
    out: Annotated[Path, typer.Option("--out", help="Checkpoint to write.")] = Path(
        "seg2change_core/assets/demo_cach.safetensors"
    ),
    epochs: Annotated[
        int | None, typer.Option(help="Training epochs (default: the documented recipe).")
    ] = None,
    scene_size: Annotated[int | None, typer.Option(help="Side of each generated training scene.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the initialisation and the augmentation.")] = 0,
    workdir: Annotated[
        Path | None,
        typer.Option(help="Folder to keep the training state and log in (default: a temporary one)."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train the small demo CACH model on generated scenes and save it with how it was made."""
    from dataclasses import replace

    from flows.commands_train import _observer
    from pipeline.demo_checkpoint import DemoCheckpointSpec
    from pipeline.demo_checkpoint import make_demo_checkpoint as build

    observer = None
    try:
        spec = DemoCheckpointSpec(seed=seed)
        if epochs is not None:
            spec = replace(spec, epochs=epochs)
        if scene_size is not None:
            spec = replace(spec, scene_size=scene_size)
        observer = _observer(progress)
        result = build(out, spec, workdir=workdir, observer=observer, log=console.print)
    except Seg2ChangeError as exc:
        _fail(exc)
        return
    finally:
        if observer is not None:
            observer.stop()
    held = result.metadata["heldout"]
    out_console.print(
        styled(
            "demo checkpoint: ",
            (str(result.path), "bold"),
            f" ({result.size_bytes / 1e6:.1f} MB, trained {result.train_seconds / 60:.1f} min)",
        )
    )
    out_console.print(
        f"  held-out scene (seed {held['seed']}): model IoU {held['model']['iou']:.4f} "
        f"F1 {held['model']['f1']:.4f}; CVA baseline IoU {held['cva_baseline']['iou']:.4f} "
        f"F1 {held['cva_baseline']['f1']:.4f}"
    )
