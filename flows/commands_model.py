"""Model commands of the ``seg2change`` CLI: ``evaluate`` and ``make-demo-checkpoint``.

``train`` lives in :mod:`flows.commands_train`.

Plain functions with typer annotations; :mod:`flows.cli` registers them on the app. Heavy
modules (torch, the models, the synthetic generator) are imported inside the functions, so the
CLI starts fast. Errors of the project's tree print their message and exit with status 2.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from flows.console import error_text, make_console, styled
from seg2change_core.errors import Seg2ChangeError

if TYPE_CHECKING:
    from seg2change_core.datasets import LabelEncoding
    from seg2change_core.evaluation import DatasetsReport, EvaluationReport

__all__ = ["evaluate", "make_demo_checkpoint"]

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


def evaluate(
    data_dirs: Annotated[
        list[Path],
        typer.Argument(help="Dataset folder(s): A/, B/ and label/ folders, OSCD roots or OSCD city folders."),
    ],
    model: Annotated[str, typer.Option("--model", help=MODEL_HELP)],
    baseline: Annotated[
        str | None,
        typer.Option(
            help="Baseline scored on the same data beside the model, with the IoU ratio: 'cva-std', "
            "'cva' or 'none'. Default: cva-std for a checkpoint, none for a baseline."
        ),
    ] = None,
    backbone_weights: Annotated[
        Path | None, typer.Option(help="Backbone weights for a checkpoint saved without them.")
    ] = None,
    split: Annotated[Path | None, typer.Option(help="Split file (JSON); evaluate only its --part.")] = None,
    part: Annotated[str, typer.Option(help="Part of the split to evaluate: test, val or train.")] = "test",
    cva_fit: Annotated[
        str, typer.Option(help="CVA threshold: 'image' (Otsu per pair) or 'dataset' (one for all).")
    ] = "image",
    ignore_value: Annotated[
        int | None, typer.Option(help="Raw label value meaning 'not labelled' (e.g. 128); not scored.")
    ] = None,
    label_values: Annotated[str | None, typer.Option(help=LABEL_VALUES_HELP)] = None,
    bands: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated bands to use, in order: names where the data names its bands (OSCD: "
            "red,green,blue or B04,B03,B02), else red,green,blue (3 bands) or b1,b2,... by position. "
            "A checkpoint gets them by position; without --bands it takes its own bands by name from "
            "named data and all bands from unnamed data."
        ),
    ] = None,
    tiled: Annotated[
        bool, typer.Option(help="Score frames larger than the model's tile tile by tile, blended.")
    ] = True,
    tile_overlap: Annotated[
        int | None, typer.Option(help="Overlap of neighbouring tiles in pixels (default a quarter tile).")
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress (plain lines when not a terminal).")] = True,
) -> None:
    """Score a change model (or a CVA baseline) per dataset and pooled: IoU, F1, precision, recall."""
    import warnings
    from collections.abc import Sequence

    from rich.progress import Progress

    from seg2change_core.change_model import ChangeModel
    from seg2change_core.checkpoints import load_change_model
    from seg2change_core.datasets import (
        ChangeDetectionDataset,
        PairSource,
        Split,
        bands_for_model,
        dataset_of,
        scan_datasets,
        select_bands,
    )
    from seg2change_core.errors import DatasetError
    from seg2change_core.evaluation import cva_for, evaluate_datasets

    def baseline_factory(kind: str) -> Callable[[str, ChangeDetectionDataset], ChangeModel]:
        return lambda _name, data: cva_for(data, standardised=kind == "cva-std")

    caught: list[warnings.WarningMessage] = []
    try:
        encoding = _label_encoding(label_values)
        if cva_fit not in ("image", "dataset"):
            raise DatasetError(f"unknown --cva-fit {cva_fit!r}; choose image or dataset")
        chosen_baseline = baseline or ("none" if model in BASELINES else "cva-std")
        if chosen_baseline not in (*BASELINES, "none"):
            raise DatasetError(f"unknown --baseline {baseline!r}; choose cva-std, cva or none")
        pairs: list[PairSource] = scan_datasets(data_dirs, label_encoding=encoding, ignore_value=ignore_value)
        if split is not None:
            if part not in ("train", "val", "test"):
                raise DatasetError(f"unknown --part {part!r}; choose test, val or train")
            pairs = Split.load(split).select(pairs, part)  # type: ignore[arg-type]
            if not pairs:
                raise DatasetError(f"the split's {part} part is empty; choose another --part")
        groups: dict[str, list[PairSource]] = {}
        for pair in pairs:
            groups.setdefault(dataset_of(pair), []).append(pair)
        requested = _bands(bands)
        model_for: Callable[[str, ChangeDetectionDataset], ChangeModel]
        if model in BASELINES:
            if requested is not None:
                groups = {name: select_bands(group, requested) for name, group in groups.items()}
            model_for = baseline_factory(model)
        else:
            loaded = load_change_model(model, backbone_weights=backbone_weights)
            groups = {name: bands_for_model(group, loaded.bands, requested) for name, group in groups.items()}
            model_for = lambda _name, _data: loaded  # noqa: E731
        datasets: Sequence[tuple[str, ChangeDetectionDataset]] = [
            (name, ChangeDetectionDataset(group, ignore_value=ignore_value, label_encoding=encoding))
            for name, group in groups.items()
        ]
        settings = {
            "data": [str(d) for d in data_dirs],
            "model_source": model,
            "split": None if split is None else str(split),
            "part": part if split is not None else "all",
            "ignore_value": ignore_value,
            "label_values": None if encoding is None else encoding.describe(),
            "bands": None if requested is None else list(requested),
            "cva_fit": cva_fit,
        }
        baseline_for = None if chosen_baseline == "none" else baseline_factory(chosen_baseline)

        def score(on_progress: Callable[[str, str, int, int], None] | None) -> DatasetsReport:
            return evaluate_datasets(
                datasets,
                model_for,
                baseline_for=baseline_for,
                cva_fit=cva_fit,  # type: ignore[arg-type]
                tiled=tiled,
                tile_overlap=tile_overlap,
                on_progress=on_progress,
                settings=settings,
            )

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if progress and console.is_terminal:
                with Progress(console=console, transient=True) as bar:
                    task = bar.add_task("evaluating", total=1)

                    def show(model_name: str, dataset: str, done: int, total: int) -> None:
                        bar.update(
                            task, description=f"{model_name} on {dataset}", completed=done, total=total
                        )

                    result = score(show)
            else:
                result = score(_PlainProgress() if progress else None)
    except Seg2ChangeError as exc:
        for warning in caught:
            console.print(error_text(warning.message, label="warning:", style="yellow"))
        _fail(exc)
        return
    for warning in caught:
        console.print(error_text(warning.message, label="warning:", style="yellow"))
    _print_datasets(result, chosen_baseline)
    _print_report(result.pooled)
    if report is not None:
        result.save(report)
        out_console.print(styled("report written to ", (str(report), "bold")))


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
