"""Label encodings: detected per dataset folder or declared, and never silently mis-scored."""

from __future__ import annotations

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
    LabelEncoding,
    change_target,
    detect_label_encoding,
    encode_label,
    scan_datasets,
    scan_folder,
)
from seg2change_core.errors import DatasetError


def write_png(path: Path, data: np.ndarray) -> None:
    array = data if data.ndim == 3 else data[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            path,
            "w",
            driver="PNG",
            width=array.shape[2],
            height=array.shape[1],
            count=array.shape[0],
            dtype="uint8",
        ) as dst:
            dst.write(array.astype(np.uint8))


def make_folder(root: Path, labels: dict[str, np.ndarray]) -> Path:
    rng = np.random.default_rng(0)
    for name, label in labels.items():
        shape = (3, *label.shape)
        write_png(root / "A" / f"{name}.png", rng.integers(0, 255, shape, dtype=np.uint8))
        write_png(root / "B" / f"{name}.png", rng.integers(0, 255, shape, dtype=np.uint8))
        write_png(root / "label" / f"{name}.png", label)
    return root


def test_parse_and_describe_round_trip() -> None:
    oscd = LabelEncoding.parse("unchanged=1,changed=2")
    assert oscd == LabelEncoding((1,), (2,))
    landsat = LabelEncoding.parse(" unchanged=0, changed=255, ignore=128 ")
    assert landsat.ignore == (128,) and LabelEncoding.parse(landsat.describe()) == landsat
    several = LabelEncoding.parse("unchanged=0,changed=1/2/3")
    assert several.changed == (1, 2, 3) and several.describe() == "unchanged=0,changed=1/2/3"
    for bad in ("changed=2", "unchanged=1,changed=x", "unchanged=1,moved=2", "unchanged=1,changed=1"):
        with pytest.raises(DatasetError, match="unchanged"):
            LabelEncoding.parse(bad)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({0, 255}, LabelEncoding((0,), (255,))),
        ({0}, LabelEncoding((0,), (255,))),  # every known encoding reads 0 as unchanged
        ({255}, LabelEncoding((0,), (255,))),
        ({0, 1}, LabelEncoding((0,), (1,))),
        ({1, 2}, LabelEncoding((1,), (2,))),
        ({2}, LabelEncoding((1,), (2,))),
        ({0, 128, 255}, LabelEncoding((0,), (255,), (128,))),
    ],
)
def test_detection_from_values(values: set[int], expected: LabelEncoding) -> None:
    assert detect_label_encoding(values) == expected


def test_ambiguous_and_unknown_values_are_refused_with_the_fix() -> None:
    with pytest.raises(DatasetError, match="--label-values unchanged=1,changed=2") as only_ones:
        detect_label_encoding({1})
    assert "different things" in str(only_ones.value)
    with pytest.raises(DatasetError, match="fit none of the known") as mixed:
        detect_label_encoding({0, 1, 255})
    assert "--label-values" in str(mixed.value)
    with pytest.raises(DatasetError, match="--label-values"):
        encode_label(np.ones((4, 4), np.uint8))


def test_a_1_2_label_is_never_scored_as_all_unchanged() -> None:
    label = np.ones((8, 8), np.uint8)
    label[2:5, 3:6] = 2  # OSCD's <city>-cm.tif: 1 = no change, 2 = change
    expected = (label == 2).astype(np.uint8)
    assert np.array_equal(change_target(label), expected)
    assert np.array_equal(encode_label(label), expected)
    image = np.zeros((1, 8, 8), np.float32)
    dataset = ChangeDetectionDataset([ChangePair("city", "oscd", image, image, label)])
    target = dataset[0]["target"].numpy()
    assert np.array_equal(target, expected) and int(target.sum()) == 9


def test_declared_encoding_and_ignore_value() -> None:
    label = np.array([[0, 1, 2, 3]], np.uint8)
    declared = LabelEncoding.parse("unchanged=0,changed=1/2,ignore=3")
    assert encode_label(label, declared).tolist() == [[0, 1, 1, IGNORE_INDEX]]
    image = np.zeros((1, 1, 4), np.float32)
    pair = ChangePair("p", "d", image, image, label)
    data = ChangeDetectionDataset([pair], label_encoding=LabelEncoding((0,), (1, 2)), ignore_value=3)
    assert data[0]["target"].tolist() == [[0, 1, 1, IGNORE_INDEX]]
    with pytest.raises(DatasetError, match="already means changed"):
        LabelEncoding((0,), (255,)).with_ignore(255)
    # Landsat: 128 = not labelled, detected without --ignore-value.
    landsat = np.array([[0, 128, 255]], np.uint8)
    assert encode_label(landsat).tolist() == [[0, IGNORE_INDEX, 1]]


def test_value_outside_the_encoding_is_refused() -> None:
    with pytest.raises(DatasetError, match=r"value\(s\) 7 .*unchanged=0,changed=255"):
        LabelEncoding((0,), (255,)).encode(np.array([[0, 7, 255]]), where="label of x")


def test_folder_encoding_is_detected_per_folder_not_per_tile(tmp_path: Path) -> None:
    empty = np.zeros((8, 8), np.uint8)
    changed = empty.copy()
    changed[:4] = 255
    root = make_folder(tmp_path / "levir_like", {"a": empty, "b": changed})
    pairs = scan_folder(root)
    assert {p.label_encoding for p in pairs} == {LabelEncoding((0,), (255,))}
    # A 1/2 folder with a tile holding only 1s (no change) is read as 1/2 throughout.
    ones = np.ones((8, 8), np.uint8)
    two = ones.copy()
    two[:2] = 2
    oscd_like = make_folder(tmp_path / "one_two", {"a": ones, "b": two})
    data = ChangeDetectionDataset(scan_folder(oscd_like))
    assert int(data[0]["target"].sum()) == 0 and int(data[1]["target"].sum()) == 16


def test_ambiguous_folder_is_refused_unless_declared(tmp_path: Path) -> None:
    ones = np.ones((8, 8), np.uint8)
    root = make_folder(tmp_path / "only_ones", {"a": ones, "b": ones})
    with pytest.raises(DatasetError, match="--label-values unchanged=1,changed=2"):
        scan_folder(root)
    declared = scan_datasets([root], label_encoding=LabelEncoding.parse("unchanged=1,changed=2"))
    assert int(ChangeDetectionDataset(declared)[0]["target"].sum()) == 0
    mixed = make_folder(tmp_path / "mixed", {"a": np.full((8, 8), 255, np.uint8), "b": ones})
    with pytest.raises(DatasetError, match=r"values found: 1 in b.png, 255 in a.png"):
        scan_folder(mixed)


@pytest.mark.shared_data
def test_real_label_encodings(shared_data: Path) -> None:
    root = shared_data / "change_detection"
    levir = scan_folder(root / "levir_cd")
    assert {p.label_encoding for p in levir} == {LabelEncoding((0,), (255,))}
    landsat = scan_folder(root / "landsat_taizhou_nanjing")
    assert {p.label_encoding for p in landsat} == {LabelEncoding((0,), (255,), (128,))}
    data = ChangeDetectionDataset(levir)
    assert sum(int((data[i]["target"] == 1).sum()) for i in range(len(data))) > 0
