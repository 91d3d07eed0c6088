"""Train the compact CACH model from scratch on real RGB pairs and compare it with CVA on held-out pairs.

Data: the LEVIR-CD, WHU-CD, DSIFN-CD and EGY-BCD tiles in ``../shared/data/change_detection``
(256x256 RGB, 0/255 change masks). They are split **by source image**
(:func:`seg2change_core.datasets.split_by_source`, per dataset): about ``--test-fraction`` of each
dataset's tiles, whole source images only, form the test part, which is never seen in training
or checkpoint selection; about ``--val-fraction`` of the rest picks the best epoch (scored on
each validation tile's top-left 252 px, a valid CACH tile); the rest trains. The split is written beside the weights.

Models, all scored with one pooled confusion over the test pixels:

* the compact CACH model trained here (random 252 px crops, flips, rotations, the reference
  loss, AdamW with warm-up and cosine decay, best epoch by validation change IoU);
* CVA with an Otsu threshold fitted **per image** (the favourable setting for CVA);
* CVA with one Otsu threshold fitted **on the whole test part**.

Weights are written to ``--out`` (default a temporary folder), never into the repository: they
are trained on third-party data. Run::

    python bench/real_pairs_from_scratch.py --minutes 13
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from seg2change_core.change_model import InputNormalisation
from seg2change_core.checkpoints import load_change_model
from seg2change_core.datasets import (
    ChangeDetectionDataset,
    band_statistics,
    scan_folders,
    split_by_source,
)
from seg2change_core.evaluation import EvaluationReport, cva_for, evaluate
from seg2change_core.metrics import binary_scores
from seg2change_core.training import LossWeights, ModelConfig, TrainConfig, TrainingObserver, train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "change_detection"
DATASETS = ("levir_cd", "whu_cd", "dsifn_cd", "egy_bcd")


class PrintObserver(TrainingObserver):
    """Prints one line per epoch."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def on_epoch(self, record: dict[str, object]) -> None:
        print(
            f"  epoch {record['epoch']:3d}  loss {record['train_loss']:.4f}  val IoU {record.get('val_iou')}"
            f"  {'best' if record['best'] else ''}  ({time.monotonic() - self.started:.0f} s)",
            flush=True,
        )


def per_dataset(report: EvaluationReport) -> dict[str, tuple[float, float]]:
    """Pooled change IoU and F1 per dataset, from the per-pair counts."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for p in report.per_pair:
        c = counts[p.key.split("/")[0]]
        for i, v in enumerate((p.tp, p.fp, p.fn, p.tn)):
            c[i] += v
    return {name: (binary_scores(*c).iou, binary_scores(*c).f1) for name, c in sorted(counts.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--out", type=Path, default=None, help="folder for weights, split and reports")
    parser.add_argument(
        "--minutes",
        type=float,
        default=13.0,
        help="training wall-time budget, checked after each epoch (~25 s on an idle 2-core machine)",
    )
    parser.add_argument("--epochs", type=int, default=24, help="epochs of the cosine schedule")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=30)
    parser.add_argument("--crops-per-image", type=int, default=1)
    parser.add_argument("--focus-change", type=float, default=0.5)
    parser.add_argument("--changed-weight", type=float, default=1.0)
    parser.add_argument("--embed-dim", type=int, default=96)
    parser.add_argument("--hidden-dim", type=int, default=32)
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="seg2change-real-pairs-"))
    out.mkdir(parents=True, exist_ok=True)

    pairs = scan_folders([args.data / name for name in args.datasets])
    split = split_by_source(
        pairs, test_fraction=args.test_fraction, val_fraction=args.val_fraction, seed=args.seed
    )
    split.save(out / "split.json")
    train_pairs, val_pairs, test_pairs = (split.select(pairs, part) for part in ("train", "val", "test"))
    by_part = {
        part: sorted({p.source_key for p in chosen})
        for part, chosen in (("train", train_pairs), ("val", val_pairs), ("test", test_pairs))
    }
    print(f"data: {', '.join(args.datasets)} ({len(pairs)} tiles of 256x256 RGB)")
    print(
        f"split by source image (seed {args.seed}): train {len(train_pairs)} tiles, val {len(val_pairs)}, test {len(test_pairs)}"
    )
    print(f"  test sources: {', '.join(by_part['test'])}")
    print(f"  val sources:  {', '.join(by_part['val'])}")

    scale = 1 / 255
    mean, std = band_statistics(train_pairs, scale, seed=args.seed)
    norm = InputNormalisation(("red", "green", "blue"), mean, std, scale)
    train_data = ChangeDetectionDataset(
        train_pairs,
        crop_size=252,
        augment=True,
        repeats=args.crops_per_image,
        focus_change=args.focus_change,
    )
    val_data = ChangeDetectionDataset(val_pairs, crop_size=252)  # cheap: 256 px would pad to 504
    test_data = ChangeDetectionDataset(test_pairs)
    model_config = ModelConfig(embed_dim=args.embed_dim, hidden_dim=args.hidden_dim, tile_size=252)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        loss=LossWeights(changed_class_weight=args.changed_weight),
        bf16_autocast=True,
        model_name="cach-compact-real-pairs",
    )
    print(
        f"training (budget {args.minutes} min, {args.epochs}-epoch schedule): {json.dumps(vars(args), default=str)}"
    )
    result = train(
        train_data,
        val_data,
        out / "cach_compact.safetensors",
        model_config=model_config,
        config=config,
        normalisation=norm,
        max_seconds=args.minutes * 60,
        observer=PrintObserver(),
        training_data={"datasets": args.datasets, "split": str(out / "split.json")},
    )
    print(
        f"trained {result.epochs_completed} epochs in {result.seconds / 60:.1f} min; best epoch "
        f"{result.best_epoch} (val IoU {result.best_val_iou:.4f})"
    )

    model = load_change_model(result.checkpoint)
    reports = {
        "CACH compact (trained here)": evaluate(model, test_data),
        "CVA, Otsu per image": evaluate(cva_for(test_data), test_data, cva_fit="image"),
        "CVA, Otsu on the test set": evaluate(cva_for(test_data), test_data, cva_fit="dataset"),
    }
    print(f"\nheld-out test part: {len(test_pairs)} tiles from {len(by_part['test'])} source images")
    print(f"{'model':32s} {'IoU':>7s} {'F1':>7s} {'prec':>7s} {'recall':>7s} {'OA':>7s}")
    for name, report in reports.items():
        s = report.scores
        print(f"{name:32s} {s.iou:7.4f} {s.f1:7.4f} {s.precision:7.4f} {s.recall:7.4f} {s.oa:7.4f}")
    print("\nper dataset (IoU / F1):")
    for name, report in reports.items():
        cells = "  ".join(
            f"{ds}: {iou:.3f}/{f1:.3f}" if not math.isnan(iou) else f"{ds}: n/a"
            for ds, (iou, f1) in per_dataset(report).items()
        )
        print(f"  {name:32s} {cells}")
    for name, report in reports.items():
        report.save(out / f"report_{name.split()[0].lower()}_{len(name)}.json")
    print(f"\nweights, split and reports in {out}")


if __name__ == "__main__":
    main()
