"""Standardised CVA, tiled scoring of large frames, per-dataset and pooled scores, the evaluate CLI."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import typer
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin
from typer.testing import CliRunner

from flows.commands_model import evaluate as evaluate_command
from seg2change_core.backbones import CompactConfig, CompactViT
from seg2change_core.baselines import CVABaseline, StandardisedCVABaseline, standardise_per_image
from seg2change_core.cach import CACHHead
from seg2change_core.change_model import CACHChangeModel, InputNormalisation
from seg2change_core.checkpoints import save_change_model
from seg2change_core.datasets import (
    OSCD_BANDS,
    S2_BAND_IDS,
    S2_RESOLUTION,
    ChangeDetectionDataset,
    ChangePair,
)
from seg2change_core.errors import DatasetError
from seg2change_core.evaluation import cva_for, evaluate, evaluate_datasets
from seg2change_core.tile_windows import axis_starts
from seg2change_core.tiled import predict_tiled

RGB = InputNormalisation(("red", "green", "blue"), (0.0,) * 3, (1.0,) * 3, 1.0)


def _write(path: Path, data: np.ndarray, *, driver: str = "PNG", resolution: float | None = None) -> None:
    array = data if data.ndim == 3 else data[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": driver, "width": array.shape[2], "height": array.shape[1], "count": array.shape[0]}
    if resolution is not None:
        profile.update(crs="EPSG:32631", transform=from_origin(500000, 4000000, resolution, resolution))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", dtype=array.dtype.name, **profile) as dst:
            dst.write(array)


def brightness_pair(seed: int = 0, size: int = 48) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Date 2 is date 1 under another illumination (gain and offset per band) plus a changed square."""
    rng = np.random.default_rng(seed)
    before = (0.1 + 0.2 * rng.random((3, size, size))).astype(np.float32)
    gain = np.array([1.9, 1.6, 2.2], np.float32)[:, None, None]
    after = before * gain + 0.08
    label = np.zeros((size, size), np.uint8)
    label[10:22, 14:30] = 255
    after[:, 10:22, 14:30] += np.array([0.12, -0.06, 0.1], np.float32)[:, None, None]  # new material
    return before, after, label


class IdentityModel:
    """Probability = band 0 of 'after'; records the input sizes it was called with."""

    name = "identity"
    normalisation = InputNormalisation(("x",), (0.0,), (1.0,), 1.0)

    def __init__(self, tile_size: int | None) -> None:
        self.tile_size = tile_size
        self.seen: list[tuple[int, int]] = []

    @property
    def bands(self) -> tuple[str, ...]:
        return ("x",)

    @property
    def in_channels(self) -> int:
        return 1

    def predict(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        self.seen.append((after.shape[2], after.shape[3]))
        return after[:, :1].clamp(0, 1)


def test_standardised_cva_beats_plain_cva_under_a_brightness_change() -> None:
    pairs = [ChangePair(f"p{s}", "light", *brightness_pair(s)) for s in range(3)]
    data = ChangeDetectionDataset(pairs)
    plain = evaluate(cva_for(data, ("red", "green", "blue")), data)
    standardised = evaluate(cva_for(data, ("red", "green", "blue"), standardised=True), data)
    assert standardised.model == "cva-std-otsu-baseline"
    assert standardised.scores.iou > 0.9
    assert standardised.scores.iou > plain.scores.iou + 0.3


def test_standardise_per_image_removes_gain_and_offset() -> None:
    x = torch.rand(2, 3, 10, 12, dtype=torch.float64)
    shifted = x * torch.tensor([2.0, 0.5, 3.0]).view(1, 3, 1, 1) + 7
    assert torch.allclose(standardise_per_image(x), standardise_per_image(shifted), atol=1e-9)
    z = standardise_per_image(x)
    assert torch.allclose(z.mean(dim=(2, 3)), torch.zeros(2, 3, dtype=torch.float64), atol=1e-9)
    x[0, 1, 0, 0] = float("nan")
    x[1, 2] = 4.0  # a constant band
    z = standardise_per_image(x)
    assert z[0, 1, 0, 0] == 0 and bool((z[1, 2] == 0).all()) and bool(torch.isfinite(z).all())


def test_fitted_standardised_cva_is_the_same_tile_by_tile() -> None:
    before, after, _ = brightness_pair(1)
    b, a = torch.from_numpy(before)[None], torch.from_numpy(after)[None]
    model = StandardisedCVABaseline(RGB)
    model.fit(b, a)
    whole = model.predict(b, a)
    left = model.predict(b[..., :20], a[..., :20])
    assert torch.allclose(whole[..., :20], left, atol=1e-6)
    unfitted = StandardisedCVABaseline(RGB)
    assert not torch.allclose(unfitted.magnitude(b[..., :20], a[..., :20]), model.magnitude(b, a)[..., :20])


def test_tiles_blend_to_a_partition_of_unity() -> None:
    assert axis_starts(10, 16, 12) == (0,) and axis_starts(40, 16, 12) == (0, 12, 24)
    values = torch.rand(2, 1, 37, 53)
    model = IdentityModel(tile_size=16)
    out = predict_tiled(model, values, values, tile_size=16, overlap=5)
    assert torch.allclose(out, values, atol=1e-6)
    assert max(model.seen) <= (16, 16) and len(model.seen) > 1


def test_evaluate_scores_large_frames_tile_by_tile() -> None:
    rng = np.random.default_rng(0)
    image = (rng.random((1, 40, 50)) > 0.7).astype(np.float32)
    label = (image[0] * 255).astype(np.uint8)
    data = ChangeDetectionDataset([ChangePair("big", "d", np.zeros_like(image), image, label)])
    model = IdentityModel(tile_size=16)
    report = evaluate(model, data)
    assert report.scores.iou == pytest.approx(1.0)
    assert max(model.seen) <= (16, 16) and report.settings["tile_size"] == 16
    whole = IdentityModel(tile_size=16)
    evaluate(whole, data, tiled=False)
    assert whole.seen == [(40, 50)]


def _hand_pair(name: str, dataset: str, pred: list[list[int]], truth: list[list[int]]) -> ChangePair:
    image = np.array(pred, np.float32)[None]
    return ChangePair(name, dataset, np.zeros_like(image), image, (np.array(truth) * 255).astype(np.uint8))


def test_per_dataset_rows_and_pooled_row() -> None:
    one = ChangeDetectionDataset([_hand_pair("a", "one", [[1, 1, 0, 0]], [[1, 0, 0, 0]])])  # TP1 FP1 TN2
    two = ChangeDetectionDataset(
        [_hand_pair("b", "two", [[1, 0]], [[1, 1]]), _hand_pair("c", "two", [[0, 0]], [[0, 0]])]
    )  # TP1 FN1 TN2
    result = evaluate_datasets(
        [("one", one), ("two", two)],
        lambda _n, _d: IdentityModel(None),
        baseline_for=lambda _n, _d: IdentityModel(None),
        settings={"data": ["x"]},
    )
    assert result.names == ("one", "two")
    assert (result.report("one").scores.tp, result.report("one").scores.fp) == (1, 1)
    assert (result.report("two").scores.tp, result.report("two").scores.fn) == (1, 1)
    assert result.report("two").pairs == 2 and result.report("two").scored_pixels == 4
    pooled = result.pooled.scores
    assert (pooled.tp, pooled.fp, pooled.fn, pooled.tn) == (2, 1, 1, 4)
    assert pooled.iou == pytest.approx(2 / 4) and result.pooled.pairs == 3
    assert result.iou_ratios() == {"one": 1.0, "two": 1.0, "pooled": 1.0}
    data = json.loads(result.to_json())
    assert [d["dataset"] for d in data["datasets"]] == ["one", "two"]
    assert (
        data["datasets"][0]["change"]["iou"] == pytest.approx(0.5) and "per_pair" not in data["datasets"][0]
    )
    assert data["change"]["iou"] == pytest.approx(0.5) and len(data["per_pair"]) == 3
    assert data["baseline"]["datasets"][1]["pairs"] == 2 and data["iou_ratio"]["pooled"] == 1.0
    with pytest.raises(DatasetError, match="no dataset"):
        evaluate_datasets([], lambda _n, _d: IdentityModel(None))


def make_rgb_folder(root: Path, *, label_values: tuple[int, int] = (0, 255), bands: int = 3) -> Path:
    rng = np.random.default_rng(3)
    for name in ("t_1", "t_2"):
        before = (rng.random((bands, 24, 24)) * 20 + 100).astype(np.uint8)
        after = before.copy()
        after[:, :8] = 250
        label = np.full((24, 24), label_values[0], np.uint8)
        label[:8] = label_values[1]
        _write(root / "A" / f"{name}.tif", before, driver="GTiff")
        _write(root / "B" / f"{name}.tif", after, driver="GTiff")
        _write(root / "label" / f"{name}.png", label)
    return root


def make_oscd_city(root: Path, city: str, size: int = 24) -> Path:
    folder = root / city
    rng = np.random.default_rng(5)
    for date in ("imgs_1", "imgs_2"):
        for name in OSCD_BANDS:
            res = S2_RESOLUTION[name]
            side = -(-size * 10 // res)
            data = (1000 + 500 * rng.random((side, side))).astype(np.uint16)
            if date == "imgs_2" and res == 10:
                data[:6] = 9000
            _write(folder / date / f"T_{S2_BAND_IDS[name]}.tif", data, driver="GTiff", resolution=float(res))
    label = np.ones((size, size), np.uint8)
    label[:6] = 2
    _write(folder / "cm" / f"{city}-cm.tif", label, driver="GTiff")
    return folder


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(evaluate_command)
    return app


def test_cli_scores_folder_and_oscd_per_dataset(tmp_path: Path) -> None:
    folder = make_rgb_folder(tmp_path / "rgb_set")
    oscd = tmp_path / "oscd_s2"
    make_oscd_city(oscd, "town")
    report = tmp_path / "r.json"
    runner = CliRunner()
    result = runner.invoke(
        _app(),
        [str(folder), str(oscd), "--model", "cva", "--baseline", "cva-std", "--report", str(report)],
    )
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "rgb_set" in out and "oscd_s2" in out and "pooled" in out and "IoU ratio" in out
    assert "evaluating cva-otsu-baseline on oscd_s2: 1/1 pairs" in result.output  # plain progress lines
    data = json.loads(report.read_text())
    rows = {d["dataset"]: d for d in data["datasets"]}
    assert rows["rgb_set"]["pairs"] == 2 and rows["oscd_s2"]["pairs"] == 1
    assert rows["oscd_s2"]["scored_pixels"] == 24 * 24
    assert rows["oscd_s2"]["change"]["iou"] > 0.9  # the 1/2 change map is decoded, not all-unchanged
    assert data["pairs"] == 3 and data["scored_pixels"] == 2 * 24 * 24 + 24 * 24
    assert set(data["iou_ratio"]) == {"rgb_set", "oscd_s2", "pooled"}
    assert data["baseline"]["model"] == "cva-std-otsu-baseline"
    picked = runner.invoke(
        _app(), [str(oscd), "--model", "cva-std", "--bands", "red,B03,blue", "--no-progress"]
    )
    assert picked.exit_code == 0, picked.output
    wrong = runner.invoke(_app(), [str(oscd), "--model", "cva-std", "--bands", "thermal", "--no-progress"])
    assert wrong.exit_code == 2 and "not a Sentinel-2 band" in " ".join(wrong.output.split())


def test_cli_label_values_one_two_and_ambiguous(tmp_path: Path) -> None:
    runner = CliRunner()
    one_two = make_rgb_folder(tmp_path / "one_two", label_values=(1, 2))
    report = tmp_path / "r.json"
    ok = runner.invoke(_app(), [str(one_two), "--model", "cva", "--report", str(report), "--no-progress"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(report.read_text())["change"]["iou"] == pytest.approx(1.0)
    only_ones = make_rgb_folder(tmp_path / "only_ones", label_values=(1, 1))
    refused = runner.invoke(_app(), [str(only_ones), "--model", "cva", "--no-progress"])
    assert refused.exit_code == 2
    assert "--label-values unchanged=1,changed=2" in " ".join(refused.output.split())
    declared = runner.invoke(
        _app(),
        [str(only_ones), "--model", "cva", "--label-values", "unchanged=1,changed=2", "--no-progress"],
    )
    assert declared.exit_code == 0, declared.output
    bad = runner.invoke(_app(), [str(one_two), "--model", "cva", "--label-values", "1,2", "--no-progress"])
    assert bad.exit_code == 2 and "unchanged=V,changed=V" in " ".join(bad.output.split())


def _rgb_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    backbone = CompactViT(CompactConfig(in_chans=3, embed_dim=16, depth=4, num_heads=2))
    model = CACHChangeModel(backbone, CACHHead(16), InputNormalisation.imagenet_rgb(1 / 255))
    save_change_model(model, path)
    return path


def test_cli_refuses_wrong_scale_and_wrong_bands_for_a_checkpoint(tmp_path: Path) -> None:
    checkpoint = _rgb_checkpoint(tmp_path / "rgb.safetensors")
    runner = CliRunner()
    oscd = tmp_path / "oscd_s2"
    make_oscd_city(oscd, "town")
    scale = runner.invoke(_app(), [str(oscd), "--model", str(checkpoint), "--no-progress"])
    text = " ".join(scale.output.split())
    assert scale.exit_code == 2, scale.output
    assert "dataset oscd_s2 holds 16-bit digital numbers" in text and "the model expects 8-bit values" in text
    six = make_rgb_folder(tmp_path / "six_bands", bands=6)
    bands = runner.invoke(_app(), [str(six), "--model", str(checkpoint), "--no-progress"])
    assert bands.exit_code == 2 and "expects 3 bands (red, green, blue)" in " ".join(bands.output.split())
    picked = runner.invoke(
        _app(), [str(six), "--model", str(checkpoint), "--bands", "b3,b2,b1", "--no-progress"]
    )
    assert picked.exit_code == 0, picked.output
    assert "cva-std" in picked.output  # the baseline is scored beside a checkpoint by default


@pytest.mark.shared_data
def test_real_oscd_and_sztaki_per_dataset(shared_data: Path) -> None:
    root = shared_data / "change_detection"
    from seg2change_core.datasets import dataset_of, scan_datasets

    pairs = scan_datasets([root / "oscd_s2", root / "sztaki_airchange"])
    groups: dict[str, list] = {}
    for pair in pairs:
        groups.setdefault(dataset_of(pair), []).append(pair)
    datasets = [(name, ChangeDetectionDataset(group)) for name, group in groups.items()]
    result = evaluate_datasets(
        datasets, lambda _n, d: cva_for(d, standardised=True), baseline_for=lambda _n, d: cva_for(d)
    )
    assert result.names == ("oscd_s2", "sztaki_airchange")
    oscd, sztaki = result.report("oscd_s2"), result.report("sztaki_airchange")
    assert oscd.scored_pixels == 395 * 360 + 408 * 390 + 471 * 525 + 517 * 461
    assert sztaki.scored_pixels == 4 * 952 * 640
    changed = 0
    for city in ("aguasclaras", "bercy", "bordeaux", "paris"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(root / "oscd_s2" / city / "cm" / f"{city}-cm.tif") as src:
                changed += int((src.read(1) == 2).sum())
    assert oscd.scores.tp + oscd.scores.fn == changed  # the 1/2 change maps' "2" pixels, all scored
    assert 0 < oscd.scores.iou < 1 and not math.isnan(result.iou_ratios()["pooled"])
    assert isinstance(cva_for(datasets[0][1]), CVABaseline)
