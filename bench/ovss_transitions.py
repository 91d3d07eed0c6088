"""Acceptance evidence of the spectral segmenter and change fusion: transitions, synthetic and real.

Part 1, a generated scene (default 1024 px, seed 0, clear acquisitions): the spectral segmenter
labels both dates with one prompt per generated class; the per-class IoU table is printed, then
:func:`seg2change_core.fusion.fuse` gates the two class maps with the *true* change mask, and the
recovered from->to transitions of the changed pixels are compared with the true ones, as a
confusion matrix of grouped classes (water, vegetation = forest + grass + cropland, bare soil,
built-up = road + building, burned) and as a per-transition table of the generated classes.

Part 2, the four OSCD Sentinel-2 cities in ``../shared/data/change_detection/oscd_s2`` (skipped,
with a message, when the folder is absent): the six bands B02, B03, B04, B08, B11, B12 (blue,
green, red, nir, swir16, swir22; DN times 0.0001) are stacked on the 10 m B02 grid (the 20 m
bands resampled bilinearly), the spectral segmenter labels both dates with an urban prompt set
(``water; vegetation; bare soil; built-up,building,road; cloud`` and an ``other`` background),
fusion is gated with the labelled change mask (``cm/cm.png`` > 127), and the transitions the
labelled change pixels get are printed. The images are Level-1C top-of-atmosphere reflectance,
not the surface reflectance the lexicon was set for, so the class maps are indicative only.

One quick-look PNG per city (before, after, labelled change coloured by transition, legend) is
written to ``--out``, by default ``./ovss-quicklooks/`` in the *current working directory*: run
the script from outside the checkout (or pass ``--out``) so the PNGs stay out of the repository.

Usage: ``python bench/ovss_transitions.py [--size 1024] [--seed 0] [--data PATH] [--out DIR] [--scale 1]``

It takes well under a minute on two cores.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from numpy.typing import NDArray
from rasterio.errors import NotGeoreferencedWarning
from rasterio.warp import Resampling, reproject
from rasterio.windows import Window

import pipeline.synthetic as synthetic
from pipeline.quicklook import render_quicklook
from seg2change_core.fusion import decode_transition, fuse
from seg2change_core.metrics import ConfusionMatrix
from seg2change_core.prompts import PromptSet
from seg2change_core.segmenters.spectral import SpectralSegmenter

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
OSCD = Path("change_detection") / "oscd_s2"

LC = synthetic.LandCover
#: One prompt per generated class, in channel order, with the class it stands for.
SYNTHETIC_PROMPTS: tuple[tuple[str, int], ...] = tuple(
    (prompt, int(lc)) for lc, prompt in synthetic.LAND_COVER_PROMPTS.items()
)
GROUPS: dict[str, tuple[int, ...]] = {g: tuple(map(int, m)) for g, m in synthetic.COARSE_GROUPS.items()}

#: Sentinel-2 bands of the segmenter's six channels, in its band order.
OSCD_BANDS: tuple[tuple[str, str], ...] = (
    ("B02", "blue"),
    ("B03", "green"),
    ("B04", "red"),
    ("B08", "nir"),
    ("B11", "swir16"),
    ("B12", "swir22"),
)
URBAN_PROMPTS = "water;vegetation;bare soil;built-up,building,road;cloud"
URBAN_BACKGROUND = "other"
DN_SCALE = 1e-4

#: Distinct colours (Kelly / Trubetskoy) for the most frequent transitions of a quick-look.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (255, 225, 25),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
)
OTHER_COLOUR = (255, 255, 255)


# ---------------------------------------------------------------------------- tables


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ") -> None:
    """Print rows under a header as aligned columns (text left, numbers right)."""
    cells = [[str(h) for h in header]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [
        all(
            isinstance(row[i], int | float | np.number) or str(row[i]).endswith("%") or row[i] == ""
            for row in rows
        )
        for i in range(len(header))
    ]
    for n, row in enumerate(cells):
        line = "  ".join(
            c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        print(indent + line.rstrip())
        if n == 0:
            print(indent + "  ".join("-" * w for w in widths))


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return "nan" if np.isnan(value) else f"{value:.3f}"
    return str(value)


# ---------------------------------------------------------------------------- part 1: synthetic


def segment_synthetic(size: int, seed: int) -> dict[str, Any]:
    """Truth and spectral-segmenter class maps of both dates of a clear generated scene.

    Parameters
    ----------
    size, seed
        Of the :class:`pipeline.synthetic.SceneSpec`.

    Returns
    -------
    dict
        ``before``/``after`` (true LandCover codes), ``changed`` (bool), ``probs_before``/
        ``probs_after`` (``(1, K, H, W)`` tensors), ``prompts`` and ``channel_class`` (the LandCover
        code of each channel).
    """
    spec = synthetic.SceneSpec(size=size, seed=seed, cloud_fraction=0.0, acquisitions_per_epoch=1)
    window = Window(0, 0, size, size)
    before, after, change_type = synthetic.truth_window(spec, window)
    prompts = PromptSet.from_string(";".join(p for p, _ in SYNTHETIC_PROMPTS))
    segmenter = SpectralSegmenter(bands=synthetic.BAND_NAMES)
    out: dict[str, Any] = {
        "before": before.astype(np.int64),
        "after": after.astype(np.int64),
        "changed": change_type != 0,
        "prompts": prompts,
        "channel_class": np.array([lc for _, lc in SYNTHETIC_PROMPTS], dtype=np.int64),
    }
    for acquisition in synthetic.acquisitions(spec):
        dn = synthetic.acquisition_window(spec, acquisition, window)
        refl = np.stack([dn[b] for b in synthetic.BAND_NAMES]).astype(np.float32) * synthetic.SCALE
        refl += synthetic.OFFSET
        out[f"probs_{acquisition.epoch.value}"] = segmenter.segment(torch.from_numpy(refl)[None], prompts)
    return out


def _group_lut() -> NDArray[np.int64]:
    lut = np.full(max(LC) + 1, -1, dtype=np.int64)
    for g, members in enumerate(GROUPS.values()):
        lut[list(members)] = g
    return lut


def print_iou(scene: dict[str, Any]) -> None:
    """Per-class IoU of the segmenter on both dates, for the generated classes and the groups."""
    fine_names = [LC(lc).label for _, lc in SYNTHETIC_PROMPTS]
    group_names = list(GROUPS)
    lut = _group_lut()
    to_index = np.full(max(LC) + 1, -1, dtype=np.int64)
    to_index[scene["channel_class"]] = np.arange(len(SYNTHETIC_PROMPTS))
    fine: dict[str, ConfusionMatrix] = {}
    grouped: dict[str, ConfusionMatrix] = {}
    for epoch in ("before", "after"):
        labels = scene[f"probs_{epoch}"][0].argmax(0).numpy()
        truth = scene[epoch]
        fine[epoch] = ConfusionMatrix(len(fine_names))
        fine[epoch].update(labels, to_index[truth])
        grouped[epoch] = ConfusionMatrix(len(group_names))
        grouped[epoch].update(lut[scene["channel_class"][labels]], lut[truth])
    print("Per-class IoU of the spectral segmenter (rows truth; pixels = truth pixels before / after)")
    for title, names, cms in (("generated class", fine_names, fine), ("group", group_names, grouped)):
        rows = []
        for i, name in enumerate(names):
            rows.append(
                [
                    name,
                    int(cms["before"].matrix[i].sum()),
                    float(cms["before"].iou()[i]),
                    int(cms["after"].matrix[i].sum()),
                    float(cms["after"].iou()[i]),
                ]
            )
        rows.append(["mean IoU", "", cms["before"].miou(), "", cms["after"].miou()])
        rows.append(["overall accuracy", "", cms["before"].oa(), "", cms["after"].oa()])
        print_table([title, "px before", "IoU before", "px after", "IoU after"], rows)
        print()


def print_synthetic_transitions(scene: dict[str, Any]) -> None:
    """Transition confusion inside the true change: grouped matrix and per generated transition."""
    changed = scene["changed"]
    prompts = scene["prompts"]
    k = prompts.num_classes
    p = torch.from_numpy(changed.astype(np.float32))[None, None]
    fused = fuse(p, scene["probs_before"], scene["probs_after"], prompts)
    b, a = decode_transition(fused.transition[0, 0], k)
    pred_b = scene["channel_class"][b.numpy()[changed]]
    pred_a = scene["channel_class"][a.numpy()[changed]]
    true_b, true_a = scene["before"][changed], scene["after"][changed]
    lut, names, n = _group_lut(), list(GROUPS), len(GROUPS)
    true_code = lut[true_b] * n + lut[true_a]
    pred_code = lut[pred_b] * n + lut[pred_a]

    def name(code: int) -> str:
        return f"{names[code // n]} -> {names[code % n]}"

    rows_t = [int(c) for c in np.unique(true_code)]
    rows_t.sort(key=lambda c: -int((true_code == c).sum()))
    cols_t = rows_t + sorted(set(np.unique(pred_code).tolist()) - set(rows_t))
    key = {c: f"T{i + 1}" for i, c in enumerate(cols_t)}
    total = int(changed.sum())
    print(
        f"Transitions inside the true change mask ({total} changed pixels; fusion gated with the "
        "true mask, so every error is the segmenter's)"
    )
    print("Grouped classes; rows: true from->to, columns: recovered from->to (key below), counts")
    matrix = [
        [f"{key[r]} {name(r)}", int((true_code == r).sum())]
        + [int(((true_code == r) & (pred_code == c)).sum()) for c in cols_t]
        + [float(((true_code == r) & (pred_code == r)).sum() / (true_code == r).sum())]
        for r in rows_t
    ]
    print_table(["true", "pixels", *(key[c] for c in cols_t), "recall"], matrix)
    extra = [c for c in cols_t if c not in rows_t]
    if extra:
        print("  recovered only: " + ", ".join(f"{key[c]} {name(c)}" for c in extra))
    hits = int((true_code == pred_code).sum())
    print(f"  grouped transitions recovered: {hits} / {total} = {hits / total:.4f}")
    print()

    fine_hit = (pred_b == true_b) & (pred_a == true_a)
    print("Generated classes; per true transition: share recovered exactly, share recovered as a group,")
    print("and the most frequent recovered transitions")
    label = {int(lc): LC(lc).label for _, lc in SYNTHETIC_PROMPTS}
    fine_true = true_b * 16 + true_a
    fine_pred = pred_b * 16 + pred_a
    rows = []
    for c in sorted(np.unique(fine_true).tolist(), key=lambda c: -int((fine_true == c).sum())):
        mask = fine_true == c
        counts = np.bincount(fine_pred[mask], minlength=256)
        top = np.argsort(-counts, kind="stable")[:3]
        top_text = ", ".join(
            f"{label[t // 16]}->{label[t % 16]} {counts[t] / mask.sum():.2f}" for t in top if counts[t]
        )
        rows.append(
            [
                f"{label[c // 16]} -> {label[c % 16]}",
                int(mask.sum()),
                float(fine_hit[mask].mean()),
                float((true_code == pred_code)[mask].mean()),
                top_text,
            ]
        )
    print_table(["true", "pixels", "exact", "grouped", "recovered as (share)"], rows)
    print(
        f"  generated-class transitions recovered exactly: {int(fine_hit.sum())} / {total} = {fine_hit.mean():.4f}"
    )
    print()


# ---------------------------------------------------------------------------- part 2: OSCD


def read_stack(folder: Path) -> tuple[NDArray[np.float32], tuple[int, int]]:
    """Six-band reflectance of one OSCD date on its 10 m B02 grid.

    Parameters
    ----------
    folder
        ``<city>/imgs_1`` or ``imgs_2``, one GeoTIFF per band named ``*_<band>.tif``.

    Returns
    -------
    stack, shape
        ``(6, H, W)`` ``float32`` (blue, green, red, nir, swir16, swir22; DN times 0.0001) and
        ``(H, W)``.
    """
    with rasterio.open(next(folder.glob("*_B02.tif"))) as ref:
        shape, transform, crs = ref.shape, ref.transform, ref.crs
    out = np.empty((len(OSCD_BANDS), *shape), dtype=np.float32)
    for i, (band, _) in enumerate(OSCD_BANDS):
        with rasterio.open(next(folder.glob(f"*_{band}.tif"))) as src:
            data = src.read(1).astype(np.float32)
            if src.shape == shape and src.transform.almost_equals(transform):
                out[i] = data
            else:
                reproject(
                    data,
                    out[i],
                    src_transform=src.transform,
                    src_crs=src.crs,
                    dst_transform=transform,
                    dst_crs=crs,
                    resampling=Resampling.bilinear,
                )
    out *= np.float32(DN_SCALE)
    return out, shape


def read_dates(city: Path) -> tuple[str, str]:
    """The two acquisition dates of a city from ``dates.txt``, as ``YYYY-MM-DD``."""
    values = {}
    for line in (city / "dates.txt").read_text().splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            v = v.strip()
            values[k.strip()] = f"{v[:4]}-{v[4:6]}-{v[6:8]}"
    return values.get("date_1", "?"), values.get("date_2", "?")


def read_change(city: Path) -> NDArray[np.bool_]:
    """The labelled change mask ``cm/cm.png`` (first band > 127)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(city / "cm" / "cm.png") as src:
            labels: NDArray[np.bool_] = src.read(1) > 127
    return labels


def oscd_city(
    city: Path, segmenter: SpectralSegmenter, prompts: PromptSet, out: Path, scale: int = 1
) -> dict[str, Any]:
    """Segment, fuse with the labelled change, print the transitions and write the quick-look.

    Parameters
    ----------
    city
        The city folder (``imgs_1``, ``imgs_2``, ``cm/cm.png``, ``dates.txt``).
    segmenter, prompts
        The segmenter and the classes.
    out
        Folder of the quick-look, written as ``<city>.png``.
    scale
        Integer enlargement of the quick-look panels.

    Returns
    -------
    dict
        ``changed`` (pixel count), ``class_change`` (share of changed pixels whose class differs
        between the dates), ``top`` (most frequent transition and its share) and ``png``.
    """
    before, shape = read_stack(city / "imgs_1")
    after, shape_after = read_stack(city / "imgs_2")
    changed = read_change(city)
    if shape_after != shape or changed.shape != shape:
        raise SystemExit(
            f"{city.name}: dates {shape}, {shape_after} and labels {changed.shape} differ in size"
        )
    date_1, date_2 = read_dates(city)
    probs_b = segmenter.segment(torch.from_numpy(before)[None], prompts)
    probs_a = segmenter.segment(torch.from_numpy(after)[None], prompts)
    fused = fuse(torch.from_numpy(changed.astype(np.float32))[None, None], probs_b, probs_a, prompts)
    labels, k = prompts.labels, prompts.num_classes
    h, w = shape
    print(
        f"{city.name}: {h} x {w} px, {date_1} -> {date_2}, {int(changed.sum())} labelled change pixels ({changed.mean():.2%})"
    )
    for title, cls in (("before", fused.class_before), ("after", fused.class_after)):
        counts = np.bincount(cls[0, 0].numpy().ravel(), minlength=k)
        shares = ", ".join(
            f"{labels[i]} {counts[i] / counts.sum():.1%}" for i in np.argsort(-counts) if counts[i]
        )
        print(f"  whole scene {title:<6}: {shares}")
    codes = fused.transition[0, 0].numpy()
    counts = np.bincount(codes[changed], minlength=k * k)
    order = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c]]
    total = int(changed.sum())
    rows = [
        [f"{labels[c // k]} -> {labels[c % k]}", int(counts[c]), f"{counts[c] / total:.1%}"] for c in order
    ]
    print_table(["from -> to (labelled change pixels)", "pixels", "share"], rows)
    same = int(sum(counts[i * k + i] for i in range(k)))
    print(
        f"  class differs between the dates: {total - same} ({(total - same) / total:.1%}); "
        f"same class on both dates: {same} ({same / total:.1%})"
    )

    # Quick-look: the most frequent transitions get their own colour, the rest one entry.
    shown = order[: len(PALETTE)]
    other = k * k
    ql_codes = np.where(changed & ~np.isin(codes, shown), other, codes)
    legend = {c: f"{labels[c // k]} -> {labels[c % k]}  {counts[c]} ({counts[c] / total:.1%})" for c in shown}
    colours = {c: PALETTE[i] for i, c in enumerate(shown)}
    rest = int(counts.sum() - counts[shown].sum())
    if rest:
        legend[other] = f"other transitions  {rest} ({rest / total:.1%})"
        colours[other] = OTHER_COLOUR
    rgb = [np.moveaxis(img[[2, 1, 0]], 0, -1) for img in (before, after)]
    png = render_quicklook(
        rgb[0],
        rgb[1],
        ql_codes,
        legend,
        colours,
        out / f"{city.name}.png",
        titles=(f"before {date_1}", f"after {date_2}", f"{city.name}: labelled change"),
        scale=scale,
    )
    print(f"  quick-look: {png}")
    print()
    top = order[0] if order else None
    return {
        "changed": total,
        "class_change": (total - same) / total if total else float("nan"),
        "top": (f"{labels[top // k]} -> {labels[top % k]}", counts[top] / total)
        if top is not None
        else ("", 0.0),
        "png": png,
    }


def run_oscd(data: Path, out: Path, scale: int = 1) -> None:
    """Part 2 over every OSCD city found under ``data``."""
    root = data / OSCD
    if not root.is_dir():
        print(f"OSCD data absent: {root} does not exist; part 2 skipped")
        return
    cities = sorted(p for p in root.iterdir() if (p / "imgs_1").is_dir() and (p / "cm" / "cm.png").is_file())
    prompts = PromptSet.from_string(URBAN_PROMPTS, background=URBAN_BACKGROUND)
    segmenter = SpectralSegmenter(bands=tuple(name for _, name in OSCD_BANDS))
    print(
        f"OSCD Sentinel-2 L1C cities ({root}); prompts {'; '.join(str(c) for c in prompts.classes)}; "
        f"background {prompts.background!r}"
    )
    print("Bands B02 B03 B04 B08 B11 B12 as blue green red nir swir16 swir22 (DN x 1e-4, 20 m bands")
    print("resampled bilinearly to the 10 m B02 grid); fusion gated with the labelled change (cm.png > 127)")
    print()
    summary = []
    for city in cities:
        result = oscd_city(city, segmenter, prompts, out, scale)
        summary.append(
            [
                city.name,
                result["changed"],
                f"{result['class_change']:.1%}",
                result["top"][0],
                f"{result['top'][1]:.1%}",
            ]
        )
    print("Summary: labelled change pixels, share whose class differs between the dates, top transition")
    print_table(["city", "pixels", "class differs", "top transition", "share"], summary)


# ---------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    """Run both parts and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="side of the generated scene (px)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated scene")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--out", type=Path, default=Path("ovss-quicklooks"), help="folder of the quick-looks")
    parser.add_argument("--scale", type=int, default=1, help="enlargement of the quick-look panels")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    print(f"== Part 1: generated scene, {args.size} x {args.size} px, seed {args.seed}, clear acquisitions")
    print(f"prompts: {'; '.join(p for p, _ in SYNTHETIC_PROMPTS)}")
    groups = "; ".join(f"{g} = {' + '.join(LC(m).label for m in members)}" for g, members in GROUPS.items())
    print(f"groups: {groups}")
    print()
    scene = segment_synthetic(args.size, args.seed)
    print_iou(scene)
    print_synthetic_transitions(scene)

    print("== Part 2: OSCD")
    run_oscd(args.data, args.out, args.scale)
    print()
    print(f"total time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
