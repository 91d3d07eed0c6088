"""Folder datasets: layout errors, label mapping, identical augmentation, and leak-free splits."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from seg2change_core.datasets import (
    IGNORE_INDEX,
    ChangeDetectionDataset,
    ChangePair,
    Split,
    augment_arrays,
    change_target,
    collate_samples,
    scan_folder,
    scan_folders,
    source_image,
    split_by_source,
)
from seg2change_core.errors import DatasetError


def write_image(path: Path, data: np.ndarray) -> None:
    """Write a (bands, H, W) or (H, W) uint8 array as PNG (or GeoTIFF for .tif)."""
    array = data if data.ndim == 3 else data[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    driver = "PNG" if path.suffix == ".png" else "GTiff"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        _write(path, array, driver)


def _write(path: Path, array: np.ndarray, driver: str) -> None:
    with rasterio.open(
        path,
        "w",
        driver=driver,
        width=array.shape[2],
        height=array.shape[1],
        count=array.shape[0],
        dtype=array.dtype.name,
    ) as dst:
        dst.write(array)


def make_dataset(root: Path, names: list[str], size: int = 16, suffix: str = ".png") -> Path:
    rng = np.random.default_rng(0)
    for name in names:
        write_image(root / "A" / f"{name}{suffix}", rng.integers(0, 255, (3, size, size), dtype=np.uint8))
        write_image(root / "B" / f"{name}{suffix}", rng.integers(0, 255, (3, size, size), dtype=np.uint8))
        label = np.zeros((size, size), np.uint8)
        label[: size // 2] = 255
        write_image(root / "label" / f"{name}{suffix}", label)
    return root


def test_scan_reads_pairs_and_keys(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "levir", ["test_1_0000_0000", "test_1_0000_0256", "test_2_0000_0000"])
    pairs = scan_folder(root)
    assert [p.key for p in pairs] == [
        "levir/test_1_0000_0000",
        "levir/test_1_0000_0256",
        "levir/test_2_0000_0000",
    ]
    assert [p.source_key for p in pairs] == ["levir/test_1", "levir/test_1", "levir/test_2"]
    pair = pairs[0].load()
    assert pair.before.shape == (3, 16, 16) and pair.before.dtype == np.uint8
    assert pair.label.shape == (16, 16)
    sample = ChangeDetectionDataset(pairs)[0]
    assert sample["target"].tolist()[0][0] == 1 and sample["target"].tolist()[-1][0] == 0


def test_missing_folder_is_named(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", ["x"])
    for path in (root / "B").iterdir():
        path.unlink()
    (root / "B").rmdir()
    with pytest.raises(DatasetError, match=r"lacks the sub-folder\(s\) B/"):
        scan_folder(root)


def test_file_without_partner_is_named(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", ["a", "b"])
    (root / "label" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"A/b\.png has no partner in .*label"):
        scan_folder(root)


def test_size_mismatch_names_the_file(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", ["a"])
    write_image(root / "B" / "a.png", np.zeros((3, 8, 16), np.uint8))
    with pytest.raises(DatasetError, match=r"B/a\.png is 8x16"):
        scan_folder(root)
    with pytest.raises(DatasetError, match=r"B/a\.png"):
        scan_folder(root, check_sizes=False)[0].load()


def test_duplicate_stems_and_empty_folder(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", ["a"])
    write_image(root / "A" / "a.tif", np.zeros((3, 16, 16), np.uint8))
    with pytest.raises(DatasetError, match="share the name 'a'"):
        scan_folder(root)
    empty = tmp_path / "empty"
    for sub in ("A", "B", "label"):
        (empty / sub).mkdir(parents=True)
    with pytest.raises(DatasetError, match="holds no images"):
        scan_folder(empty)


def test_two_datasets_with_one_name_are_refused(tmp_path: Path) -> None:
    make_dataset(tmp_path / "one" / "data", ["a"])
    make_dataset(tmp_path / "two" / "data", ["a"])
    with pytest.raises(DatasetError, match="both named 'data'"):
        scan_folders([tmp_path / "one" / "data", tmp_path / "two" / "data"])


def test_change_target_mapping() -> None:
    assert change_target(np.array([[0, 255, 128, 100]])).tolist() == [[0, 1, 1, 0]]
    assert change_target(np.array([[0, 1, 1, 0]])).tolist() == [[0, 1, 1, 0]]
    landsat = np.array([[0, 255, 128]], np.uint8)
    assert change_target(landsat, ignore_value=128).tolist() == [[0, 1, IGNORE_INDEX]]
    assert change_target(np.array([[0, 1, 128]]), ignore_value=128).tolist() == [[0, 1, IGNORE_INDEX]]
    # A raw 255 beside 0 and 1 is a 0/255 label: 1 is below the threshold.
    assert change_target(np.array([[0, 1, 255]])).tolist() == [[0, 0, 1]]


def test_augmentation_is_identical_for_a_b_and_label() -> None:
    height, width = 40, 40
    coords = np.arange(height * width, dtype=np.float32).reshape(height, width)
    before = np.stack([coords, -coords])
    after = before + 7
    label = (coords.astype(np.int64) % 2).astype(np.uint8)
    seen = set()
    for seed in range(20):
        rng = np.random.default_rng(seed)
        a, b, t = augment_arrays([before, after, label], rng, crop_size=24)
        assert a.shape == (2, 24, 24) and t.shape == (24, 24)
        np.testing.assert_array_equal(b, a + 7)
        np.testing.assert_array_equal(a[1], -a[0])
        np.testing.assert_array_equal(t, a[0].astype(np.int64) % 2)
        seen.add(tuple(a[0, :2, :2].ravel().tolist()))
    assert len(seen) > 10  # crops, flips and rotations do vary


def test_augmentation_pads_small_images_with_ignore() -> None:
    image = np.ones((1, 10, 10), np.float32)
    label = np.zeros((10, 10), np.uint8)
    _, t = augment_arrays(
        [image, label], np.random.default_rng(0), crop_size=16, flip=False, rotate=False, pad_values=[0, 255]
    )
    assert t.shape == (16, 16) and (t == 255).sum() == 16 * 16 - 100


def test_dataset_samples_depend_on_seed_epoch_and_index() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((3, 64, 64), dtype=np.float32)
    pair = ChangePair("p", "d", image, image * 2, (image[0] > 0.5).astype(np.uint8))
    data = ChangeDetectionDataset([pair], crop_size=32, augment=True, seed=3, repeats=2)
    assert len(data) == 2
    first = data[0]["before"]
    assert np.array_equal(first, data[0]["before"])
    assert not np.array_equal(first, data[1]["before"])
    data.set_epoch(1)
    assert not np.array_equal(first, data[0]["before"])
    data.set_epoch(0)
    sample = data[1]
    np.testing.assert_allclose(sample["after"], sample["before"] * 2)
    np.testing.assert_array_equal(sample["target"], (sample["before"][0] > 0.5).long())
    batch = collate_samples([data[0], data[1]])
    assert batch.before.shape == (2, 3, 32, 32) and batch.keys == ["d/p", "d/p"]


def test_source_image_rules() -> None:
    assert source_image("test_3_0512_0256") == "test_3"
    assert source_image("train_386_0512_0768") == "train_386"
    assert source_image("whu_000121_0000_0256") == "whu_000121"
    assert source_image("4_2") == "4"
    assert source_image("train_1") == "train_1"
    assert source_image("szada_2") == "szada_2"


def _fake_pairs(datasets: dict[str, list[str]]) -> list[ChangePair]:
    image = np.zeros((1, 2, 2), np.float32)
    label = np.zeros((2, 2), np.uint8)
    return [ChangePair(name, ds, image, image, label) for ds, names in datasets.items() for name in names]


def test_split_by_source_never_leaks() -> None:
    levir = [f"test_{i}_{r:04d}_{c:04d}" for i in range(1, 8) for r in (0, 256) for c in (0, 256)]
    dsifn = [f"{n}_{k}" for n in range(7) for k in range(1, 5)]
    whu = [f"whu_{s}_{r:04d}_0000" for s in ("000121", "000213") for r in (0, 256, 512)]
    pairs = _fake_pairs({"levir": levir, "dsifn": dsifn, "whu": whu, "single": ["only"]})
    for seed in range(5):
        split = split_by_source(pairs, test_fraction=0.25, val_fraction=0.2, seed=seed)
        keys = [*split.train, *split.val, *split.test]
        assert sorted(keys) == sorted(p.key for p in pairs)  # every pair exactly once
        source = {p.key: p.source_key for p in pairs}
        parts = [{source[k] for k in part} for part in (split.train, split.val, split.test)]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        assert 0.1 < len([k for k in split.test if k.startswith("levir/")]) / len(levir) < 0.45
        assert any(k.startswith("whu/") for k in split.test)  # two sources: one each to test and train
        assert "single/only" in split.train
    assert split_by_source(pairs, seed=1) == split_by_source(pairs, seed=1)
    assert split_by_source(pairs, seed=1) != split_by_source(pairs, seed=2)


def test_split_file_round_trip_and_checks(tmp_path: Path) -> None:
    pairs = _fake_pairs({"d": ["a_1", "b_1", "c_1", "d_1"]})
    split = split_by_source(pairs, test_fraction=0.25, val_fraction=0.3, seed=0)
    split.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json") == split
    assert [p.key for p in split.select(pairs, "test")] == list(split.test)
    with pytest.raises(DatasetError, match="in two parts"):
        Split.from_json('{"train": ["d/a"], "val": [], "test": ["d/a"]}')
    with pytest.raises(DatasetError, match="not in the data"):
        Split(("d/zzz",), (), ()).select(pairs, "train")
    # a split over several datasets applies to some of them: the others' keys are left out
    wider = Split((*split.train, "other/x_1"), split.val, split.test)
    assert [p.key for p in wider.select(pairs, "train")] == list(split.train)


@pytest.mark.shared_data
def test_real_datasets_split_by_source_image(shared_data: Path) -> None:
    """Real LEVIR/WHU/DSIFN/EGY names: our source rule agrees with the manifest; no leak."""
    root = shared_data / "change_detection"
    names = ["levir_cd", "whu_cd", "dsifn_cd", "egy_bcd"]
    pairs = scan_folders([root / n for n in names])
    with (root / "manifest.csv").open() as handle:
        manifest = {(row["dataset"], row["name"]): row["source_image"] for row in csv.DictReader(handle)}
    # Our sources group the tiles exactly as the manifest's source images do (a bijection; the
    # manifest spells WHU sources without the "whu_" prefix).
    ours_to_manifest: dict[str, set[str]] = {}
    manifest_to_ours: dict[str, set[str]] = {}
    for pair in pairs:
        dataset, name = pair.key.split("/")
        theirs = f"{dataset}/{manifest[(dataset, name)]}"
        ours_to_manifest.setdefault(pair.source_key, set()).add(theirs)
        manifest_to_ours.setdefault(theirs, set()).add(pair.source_key)
    assert all(len(v) == 1 for v in ours_to_manifest.values())
    assert all(len(v) == 1 for v in manifest_to_ours.values())
    assert len(ours_to_manifest) < len(pairs)  # tiles of one source really are grouped
    split = split_by_source(pairs, test_fraction=0.25, val_fraction=0.15, seed=0)
    source = {p.key: p.source_key for p in pairs}
    test_sources = {source[k] for k in split.test}
    assert test_sources and not test_sources & {source[k] for k in [*split.train, *split.val]}
    assert {k.split("/")[0] for k in split.test} == set(names)


def test_focus_change_crops_contain_change() -> None:
    label = np.zeros((200, 200), np.uint8)
    label[150:153, 20:23] = 255  # one small change far from most crop positions
    image = np.zeros((1, 200, 200), np.float32)
    pair = ChangePair("p", "d", image, image, label)
    focused = ChangeDetectionDataset([pair], crop_size=40, augment=True, focus_change=1.0, repeats=30)
    assert all(bool((focused[i]["target"] == 1).any()) for i in range(len(focused)))
    uniform = ChangeDetectionDataset([pair], crop_size=40, augment=True, repeats=30)
    assert sum(bool((uniform[i]["target"] == 1).any()) for i in range(len(uniform))) < 15
