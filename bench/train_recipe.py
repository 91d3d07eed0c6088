"""Time a training recipe on the real pairs of ``../shared/data``: seconds per step and per epoch.

Runs :func:`seg2change_core.training_setup.prepare_training` with a recipe (``rgb`` by default)
on the RGB change-detection sets and the by-source split ``bench/splits/shared_rgb_by_source.json``,
prints how the epochs were fitted to the recipe's time budget, then trains ``--epochs`` epochs
(2 by default; the whole recipe with ``--full``) and prints each epoch's measured seconds and
validation IoU per dataset. Weights go to a temporary folder (or ``--out``), never into the
repository: they are trained on third-party data. Run::

    python bench/train_recipe.py --recipe rgb --threads 2
    python bench/train_recipe.py --recipe sentinel2 --data oscd_s2 --split bench/splits/oscd_by_city.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from seg2change_core.recipes import get_recipe
from seg2change_core.training import TrainingObserver
from seg2change_core.training_setup import prepare_training

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "change_detection"
RGB_SETS = ("levir_cd", "whu_cd", "dsifn_cd", "egy_bcd", "sztaki_airchange")


class EpochPrinter(TrainingObserver):
    """Prints each epoch's seconds and validation scores."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_epoch(self, record: dict[str, Any]) -> None:
        self.seconds.append(float(record["seconds"]))
        print(
            f"  epoch {record['epoch']:3d}  {record['seconds']:6.1f} s  loss {record['train_loss']:.4f}"
            f"  val IoU {record.get('val_iou')}  {record.get('val_iou_datasets', '')}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default="rgb")
    parser.add_argument(
        "--data", nargs="+", default=list(RGB_SETS), help="folders under shared/data/change_detection"
    )
    parser.add_argument("--split", type=Path, default=ROOT / "bench" / "splits" / "shared_rgb_by_source.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--epochs", type=int, default=2, help="epochs to run and time (the schedule is the recipe's)"
    )
    parser.add_argument("--full", action="store_true", help="run the whole recipe instead of --epochs")
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bfloat16 autocast (default: where native)",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--minutes", type=float, default=None, help="time budget (default: the recipe's)")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"no real data at {DATA}: this bench needs ../shared/data beside the checkout")
    torch.set_num_threads(args.threads)
    recipe = get_recipe(args.recipe)
    if args.minutes is not None:
        recipe = replace(recipe, minutes=args.minutes)
    if args.bf16 is not None:
        recipe = replace(recipe, bf16=args.bf16)
    out = args.out or Path(tempfile.mkdtemp(prefix="seg2change-train-")) / f"{args.recipe}.safetensors"
    started = time.monotonic()
    run = prepare_training(recipe, [DATA / d for d in args.data], out, split=args.split, log=print)
    print(
        f"prepared in {time.monotonic() - started:.1f} s: {len(run.train_data)} samples per epoch, "
        f"{run.val_pairs} validation pairs, {args.threads} threads, bf16 {run.config.bf16_autocast}"
    )
    if run.plan is not None:
        p = run.plan
        print(
            f"measured: {p.step_seconds:.2f} s per step of {recipe.train.batch_size} crops, "
            f"validation {p.validation_seconds:.1f} s; {p.describe()}"
        )
    printer = EpochPrinter()
    result = run.run(stop_after_epochs=None if args.full else args.epochs, observer=printer)
    mean = sum(printer.seconds) / len(printer.seconds)
    print(
        f"{len(printer.seconds)} epochs, {mean:.1f} s per epoch (mean), {result.seconds / 60:.1f} min in all; "
        f"the recipe's {run.config.epochs} epochs take about {mean * run.config.epochs / 60:.1f} min"
    )
    print(
        f"best validation IoU {result.best_val_iou:.4f} at epoch {result.best_epoch}; checkpoint {result.checkpoint}"
    )


if __name__ == "__main__":
    main()
