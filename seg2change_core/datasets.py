"""Bi-temporal change-detection datasets: the common folder layout, augmentation and splits.

Folder layout
-------------
The layout LEVIR-CD, WHU-CD, DSIFN-CD and CA-CDD ship in::

    root/
      A/<name>.png        date 1 (any band count; PNG, JPG or TIF)
      B/<name>.png        date 2, same size and band count as A
      label/<name>.png    change mask, same height and width (one band)
      label_A/<name>.png  optional: class map of date 1 (semantic change)
      label_B/<name>.png  optional: class map of date 2

Pairs are matched by file stem; a file without a partner, two files with one stem, or a size that
differs is a :class:`~seg2change_core.errors.DatasetError` naming the file. Images are read with
rasterio (imported when the first file is read), so every GDAL format works.

Change targets
--------------
A raw change label becomes a training/evaluation target of ``0`` (unchanged), ``1`` (changed) or
:data:`IGNORE_INDEX` (255, not scored) by :func:`change_target`: labels holding only 0 and 1 (apart
from the ignore value) are taken as they are; any other label is binarised with ``label > 127``
(so 8-bit 0/255 masks work). An explicit ``ignore_value`` (e.g. 128, "not labelled", in the Landsat
Taizhou/Nanjing labels) becomes 255 after that mapping.

Augmentation
------------
:func:`augment_arrays` applies one random crop, horizontal/vertical flip and 90-degree rotation to
date A, date B and every label alike. Draws come from a generator seeded by
``(seed, epoch, index)``, so a sample depends only on those three numbers: runs are reproducible
and a resumed training sees exactly the samples an uninterrupted one would.

Splits
------
Public tiles are often cut from larger source images; a test tile must not share pixels with a
training tile. :func:`source_image` maps a tile name to its source (``test_3_0512_0256`` ->
``test_3``, ``whu_000121_0000_0256`` -> ``whu_000121``, DSIFN ``4_2`` -> ``4``) and
:func:`split_by_source` assigns whole sources to the train, validation and test parts.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TypedDict

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import Dataset

from seg2change_core.errors import DatasetError

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_SUFFIXES",
    "Batch",
    "ChangeDetectionDataset",
    "ChangePair",
    "FolderPair",
    "PairSource",
    "Sample",
    "Split",
    "augment_arrays",
    "band_statistics",
    "change_target",
    "collate_samples",
    "default_band_names",
    "read_image",
    "scan_folder",
    "scan_folders",
    "source_image",
    "split_by_source",
    "value_scale",
]

#: Target value of pixels that are not trained on or scored.
IGNORE_INDEX = 255
#: File suffixes (lower case) read as images.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

PartName = Literal["train", "val", "test"]
Array = NDArray[np.generic]

_TILE_OFFSETS = re.compile(r"^(?P<source>.+)_\d+_\d+$")
_DSIFN_TILE = re.compile(r"^(?P<source>\d+)_\d+$")


def read_image(path: Path) -> Array:
    """Read all bands of an image file as a ``(bands, height, width)`` array of its own dtype.

    Raises
    ------
    DatasetError
        When the file cannot be read as an image.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                data: Array = src.read()
    except RasterioIOError as exc:
        raise DatasetError(f"cannot read image {path}: {exc}; give a PNG, JPG or GeoTIFF file") from exc
    return data


def _image_shape(path: Path) -> tuple[int, int, int]:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return int(src.count), int(src.height), int(src.width)
    except RasterioIOError as exc:
        raise DatasetError(f"cannot read image {path}: {exc}; give a PNG, JPG or GeoTIFF file") from exc


def _single_band(data: Array, path: Path | str) -> Array:
    if data.ndim == 2:
        return data
    if data.shape[0] == 1 or all(np.array_equal(data[0], band) for band in data[1:]):
        return data[0]
    raise DatasetError(
        f"label {path} has {data.shape[0]} different bands; a label must have one band "
        "(or identical bands, as some RGB-saved masks do)"
    )


def change_target(
    label: Array, *, ignore_value: int | None = None, threshold: int = 127
) -> NDArray[np.uint8]:
    """Map a raw change label to the target ``0`` / ``1`` / :data:`IGNORE_INDEX`.

    Parameters
    ----------
    label
        Raw label ``(H, W)``: 0/255 masks, 0/1 masks, or masks with an ignore value.
    ignore_value
        Raw value meaning "not labelled" (e.g. 128); becomes :data:`IGNORE_INDEX`. A 0/1 label
        with unlabelled pixels must mark them with this value (it is left out when telling 0/1
        labels from 0/255 ones): a raw 255 beside 0 and 1 makes the label a 0/255 one, in which
        1 is "unchanged".
    threshold
        Raw values above it are "changed" (unless the label holds only 0 and 1).

    Returns
    -------
    numpy.ndarray
        ``uint8`` target of the same shape.
    """
    raw = np.asarray(label).astype(np.int64, copy=False)
    scored = raw if ignore_value is None else raw[raw != ignore_value]
    binary01 = scored.size > 0 and bool(np.isin(scored, (0, 1)).all())
    target = (raw != 0) if binary01 else (raw > threshold)
    out = target.astype(np.uint8)
    if ignore_value is not None:
        out[raw == ignore_value] = IGNORE_INDEX
    return out


def source_image(name: str) -> str:
    """The source image a tile was cut from, from the tile's name.

    Rules, first match wins:

    * ``<source>_<row>_<col>`` (LEVIR-CD-256 ``test_3_0512_0256``, WHU ``whu_000121_0000_0256``)
      -> ``<source>``;
    * ``<n>_<k>`` with numbers only (DSIFN-256 ``4_2``) -> ``<n>``;
    * any other name is its own source.

    Parameters
    ----------
    name
        File stem of the tile.
    """
    for pattern in (_TILE_OFFSETS, _DSIFN_TILE):
        match = pattern.match(name)
        if match:
            return match.group("source")
    return name


@dataclass(frozen=True)
class ChangePair:
    """One co-registered bi-temporal pair held in memory.

    Attributes
    ----------
    name
        Pair name (file stem for folder data).
    dataset
        Dataset (folder) name; ``dataset/name`` is the pair's key.
    before, after
        ``(bands, H, W)`` raw images.
    label
        ``(H, W)`` raw change label (see :func:`change_target`).
    class_before, class_after
        Optional ``(H, W)`` class maps (``0 .. K-1``, 255 ignored).
    source
        Source image; ``None`` means :func:`source_image` of ``name``.
    """

    name: str
    dataset: str
    before: Array
    after: Array
    label: Array
    class_before: Array | None = None
    class_after: Array | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if self.before.ndim != 3 or self.before.shape != self.after.shape:
            raise DatasetError(
                f"pair {self.key}: before {self.before.shape} and after {self.after.shape} must be two "
                "(bands, H, W) arrays of one shape"
            )
        for what in ("label", "class_before", "class_after"):
            value = getattr(self, what)
            if value is not None and value.shape != self.before.shape[1:]:
                raise DatasetError(
                    f"pair {self.key}: {what} has shape {value.shape}, the images {self.before.shape[1:]}"
                )

    @property
    def key(self) -> str:
        """``dataset/name``: unique over several datasets."""
        return f"{self.dataset}/{self.name}"

    @property
    def source_key(self) -> str:
        """``dataset/source``: pairs with one source key may share pixels."""
        return f"{self.dataset}/{self.source or source_image(self.name)}"

    def load(self) -> ChangePair:
        """Itself (it is already in memory)."""
        return self


class PairSource(Protocol):
    """Something that yields a :class:`ChangePair`: a folder pair (read on demand) or a pair itself."""

    @property
    def key(self) -> str:
        """``dataset/name``."""
        ...

    @property
    def source_key(self) -> str:
        """``dataset/source image``."""
        ...

    def load(self) -> ChangePair:
        """Read the pair."""
        ...


@dataclass(frozen=True)
class FolderPair:
    """The files of one pair in the folder layout (read by :meth:`load`).

    Attributes
    ----------
    name
        File stem.
    dataset
        Name of the dataset folder.
    before, after, label
        Paths of ``A/``, ``B/`` and ``label/`` files.
    class_before, class_after
        Paths in ``label_A/`` and ``label_B/``, when the dataset has class maps.
    """

    name: str
    dataset: str
    before: Path
    after: Path
    label: Path
    class_before: Path | None = None
    class_after: Path | None = None

    @property
    def key(self) -> str:
        """``dataset/name``."""
        return f"{self.dataset}/{self.name}"

    @property
    def source_key(self) -> str:
        """``dataset/source image`` (see :func:`source_image`)."""
        return f"{self.dataset}/{source_image(self.name)}"

    def load(self) -> ChangePair:
        """Read the files.

        Raises
        ------
        DatasetError
            When a file is unreadable or the sizes or band counts differ (naming the file).
        """
        before, after = read_image(self.before), read_image(self.after)
        if before.shape != after.shape:
            raise DatasetError(
                f"{self.after} has {after.shape[0]} bands of {after.shape[1]}x{after.shape[2]} but "
                f"{self.before} has {before.shape[0]} bands of {before.shape[1]}x{before.shape[2]}; "
                "A and B must be co-registered images of one size and band count"
            )
        maps: dict[str, Array | None] = {}
        for what in ("label", "class_before", "class_after"):
            path: Path | None = getattr(self, what)
            if path is None:
                maps[what] = None
                continue
            data = _single_band(read_image(path), path)
            if data.shape != before.shape[1:]:
                raise DatasetError(
                    f"{path} is {data.shape[0]}x{data.shape[1]} but {self.before} is "
                    f"{before.shape[1]}x{before.shape[2]}; labels must cover the image pixel for pixel"
                )
            maps[what] = data
        label = maps["label"]
        assert label is not None
        return ChangePair(
            self.name,
            self.dataset,
            before,
            after,
            label,
            maps["class_before"],
            maps["class_after"],
        )


def _stems(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in found:
            raise DatasetError(
                f"{path} and {found[path.stem]} share the name {path.stem!r}; keep one file per pair"
            )
        found[path.stem] = path
    return found


def scan_folder(
    root: str | Path,
    *,
    semantic: bool | None = None,
    check_sizes: bool = True,
    dataset: str | None = None,
) -> list[FolderPair]:
    """List the pairs of a dataset in the ``A/``, ``B/``, ``label/`` layout.

    Parameters
    ----------
    root
        Dataset folder.
    semantic
        Require (``True``), ignore (``False``) or use when present (``None``) the ``label_A/`` and
        ``label_B/`` class maps.
    check_sizes
        Read every file's header and check sizes and band counts now, so that a bad file is
        reported before any work starts.
    dataset
        Dataset name in pair keys; default the folder name.

    Returns
    -------
    list of FolderPair
        Sorted by name.

    Raises
    ------
    DatasetError
        Missing folders, files without a partner, duplicate names, no pairs, or sizes that differ.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist; give a folder with A/, B/ and label/")
    folders = {"A": root / "A", "B": root / "B", "label": root / "label"}
    missing = [name for name, path in folders.items() if not path.is_dir()]
    if missing:
        raise DatasetError(
            f"{root} lacks the sub-folder(s) {', '.join(f'{m}/' for m in missing)}; a change dataset "
            "holds A/ (date 1), B/ (date 2) and label/ (change mask) with one file per pair in each"
        )
    has_classes = (root / "label_A").is_dir() and (root / "label_B").is_dir()
    if semantic and not has_classes:
        raise DatasetError(
            f"{root} has no label_A/ and label_B/ class maps; add them for semantic change or drop "
            "the semantic option"
        )
    use_classes = has_classes if semantic is None else semantic
    if use_classes:
        folders["label_A"] = root / "label_A"
        folders["label_B"] = root / "label_B"
    listed = {name: _stems(path) for name, path in folders.items()}
    names = set().union(*(set(files) for files in listed.values()))
    for name in sorted(names):
        for folder, files in listed.items():
            if name not in files:
                have = next(files_[name] for files_ in listed.values() if name in files_)
                raise DatasetError(
                    f"{have} has no partner in {folders[folder]}/; every pair needs one file named "
                    f"{name}.* in each of {', '.join(f'{f}/' for f in folders)}"
                )
    if not names:
        raise DatasetError(f"{root}/A holds no images ({', '.join(IMAGE_SUFFIXES)}); add pairs")
    ds_name = dataset or root.resolve().name
    pairs = [
        FolderPair(
            name,
            ds_name,
            listed["A"][name],
            listed["B"][name],
            listed["label"][name],
            listed["label_A"][name] if use_classes else None,
            listed["label_B"][name] if use_classes else None,
        )
        for name in sorted(names)
    ]
    if check_sizes:
        for pair in pairs:
            _check_pair_shapes(pair)
    return pairs


def _check_pair_shapes(pair: FolderPair) -> None:
    bands, height, width = _image_shape(pair.before)
    for what in ("after", "label", "class_before", "class_after"):
        path: Path | None = getattr(pair, what)
        if path is None:
            continue
        other = _image_shape(path)
        if other[1:] != (height, width) or (what == "after" and other[0] != bands):
            raise DatasetError(
                f"{path} is {other[1]}x{other[2]} with {other[0]} band(s) but {pair.before} is "
                f"{height}x{width} with {bands}; A, B and the labels of a pair must be co-registered "
                "and of one size"
            )


def scan_folders(roots: Iterable[str | Path], *, semantic: bool | None = None) -> list[FolderPair]:
    """:func:`scan_folder` over several datasets; the datasets must have different names.

    Raises
    ------
    DatasetError
        As :func:`scan_folder`, or when two folders share a name (their keys would clash).
    """
    pairs: list[FolderPair] = []
    seen: dict[str, Path] = {}
    for root in roots:
        path = Path(root)
        name = path.resolve().name
        if name in seen:
            raise DatasetError(f"{path} and {seen[name]} are both named {name!r}; rename one of them")
        seen[name] = path
        pairs.extend(scan_folder(path, semantic=semantic))
    return pairs


def augment_arrays(
    arrays: Sequence[Array],
    rng: np.random.Generator,
    *,
    crop_size: int | None = None,
    flip: bool = True,
    rotate: bool = True,
    pad_values: Sequence[float] | None = None,
    contain: tuple[int, int] | None = None,
) -> list[Array]:
    """Apply one random crop, flip and 90-degree rotation identically to several arrays.

    Parameters
    ----------
    arrays
        ``(C, H, W)`` or ``(H, W)`` arrays sharing ``H`` and ``W``.
    rng
        Source of the random draws (crop corner, then flips, then rotation).
    crop_size
        Side of the square crop; arrays smaller than it are first padded at the bottom and right
        with ``pad_values``. ``None`` keeps the full size.
    flip, rotate
        Draw horizontal/vertical flips and a rotation by ``k * 90`` degrees. Rotations by 90 and
        270 degrees are only drawn for square outputs.
    pad_values
        Value padded into each array (default 0).
    contain
        ``(row, column)`` of a pixel the crop must contain (the crop corner is drawn among the
        positions that contain it); ``None`` draws it anywhere.

    Returns
    -------
    list of numpy.ndarray
        Contiguous copies, in the order given.
    """
    height, width = arrays[0].shape[-2:]
    if any(a.shape[-2:] != (height, width) for a in arrays):
        raise DatasetError(f"arrays to augment differ in size: {[a.shape for a in arrays]}")
    out = list(arrays)
    if crop_size is not None:
        if height < crop_size or width < crop_size:
            fills = pad_values or [0.0] * len(out)
            pad_h, pad_w = max(0, crop_size - height), max(0, crop_size - width)
            out = [
                np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, pad_h), (0, pad_w)], constant_values=fill)
                for a, fill in zip(out, fills, strict=True)
            ]
            height, width = height + pad_h, width + pad_w
        top_range, left_range = (0, height - crop_size), (0, width - crop_size)
        if contain is not None:
            row, col = contain
            top_range = (max(0, row - crop_size + 1), min(row, height - crop_size))
            left_range = (max(0, col - crop_size + 1), min(col, width - crop_size))
        top = int(rng.integers(top_range[0], top_range[1] + 1))
        left = int(rng.integers(left_range[0], left_range[1] + 1))
        out = [a[..., top : top + crop_size, left : left + crop_size] for a in out]
        height = width = crop_size
    if flip:
        if rng.random() < 0.5:
            out = [a[..., :, ::-1] for a in out]
        if rng.random() < 0.5:
            out = [a[..., ::-1, :] for a in out]
    if rotate:
        k = int(rng.integers(0, 4)) if height == width else 2 * int(rng.integers(0, 2))
        if k:
            out = [np.rot90(a, k, axes=(a.ndim - 2, a.ndim - 1)) for a in out]
    return [np.ascontiguousarray(a) for a in out]


class Sample(TypedDict):
    """One dataset item (tensors without a batch axis)."""

    before: torch.Tensor
    """``(bands, H, W)`` float32 raw values."""
    after: torch.Tensor
    """Same for date 2."""
    target: torch.Tensor
    """``(H, W)`` int64 change target: 0, 1 or 255."""
    class_before: torch.Tensor | None
    """``(H, W)`` int64 class map of date 1, or ``None``."""
    class_after: torch.Tensor | None
    """Same for date 2."""
    key: str
    """``dataset/name``."""


@dataclass(frozen=True)
class Batch:
    """Stacked samples (see :func:`collate_samples`).

    Attributes
    ----------
    before, after
        ``(B, bands, H, W)`` float32 raw values.
    target
        ``(B, H, W)`` int64 change targets.
    class_before, class_after
        ``(B, H, W)`` int64 class maps, or ``None``.
    keys
        Pair keys.
    """

    before: torch.Tensor
    after: torch.Tensor
    target: torch.Tensor
    class_before: torch.Tensor | None
    class_after: torch.Tensor | None
    keys: list[str]


def collate_samples(samples: Sequence[Sample]) -> Batch:
    """Stack samples of one size into a :class:`Batch` (a ``DataLoader`` ``collate_fn``).

    Raises
    ------
    DatasetError
        When the samples differ in size (crop them, or use batch size 1).
    """
    shapes = {tuple(s["before"].shape) for s in samples}
    if len(shapes) != 1:
        raise DatasetError(
            f"cannot batch pairs of different sizes {sorted(shapes)}; set a crop size or use batch size 1"
        )
    with_classes = all(s["class_before"] is not None and s["class_after"] is not None for s in samples)
    return Batch(
        before=torch.stack([s["before"] for s in samples]),
        after=torch.stack([s["after"] for s in samples]),
        target=torch.stack([s["target"] for s in samples]),
        class_before=torch.stack([s["class_before"] for s in samples])  # type: ignore[misc]
        if with_classes
        else None,
        class_after=torch.stack([s["class_after"] for s in samples])  # type: ignore[misc]
        if with_classes
        else None,
        keys=[s["key"] for s in samples],
    )


@dataclass
class ChangeDetectionDataset(Dataset[Sample]):
    """Pairs as training or evaluation samples, optionally cropped and augmented.

    Parameters
    ----------
    pairs
        Folder pairs (read on first use) or in-memory :class:`ChangePair` objects.
    crop_size
        Side of the random square crop; ``None`` gives whole images.
    augment
        Draw random flips and rotations (and, with ``crop_size``, random crop positions). Without
        it, crops are taken at the top-left corner.
    seed
        Seed of the augmentation draws (see the module docstring).
    ignore_value
        Raw label value meaning "not labelled" (see :func:`change_target`).
    cache
        Keep pairs in memory once read.
    repeats
        Samples drawn from each pair per epoch (item ``i`` is pair ``i % len(pairs)``, each
        with its own draws); use it to take several random crops of large images per epoch.
    focus_change
        Share of augmented crops drawn to contain a randomly chosen changed pixel (when the pair
        has any), so that rare change and its boundaries are seen more often; 0 draws every crop
        uniformly.

    Notes
    -----
    Call :meth:`set_epoch` before each epoch so that every epoch draws new augmentations.
    """

    pairs: Sequence[PairSource]
    crop_size: int | None = None
    augment: bool = False
    seed: int = 0
    ignore_value: int | None = None
    cache: bool = True
    repeats: int = 1
    focus_change: float = 0.0
    epoch: int = 0
    _cache: dict[int, ChangePair] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.pairs:
            raise DatasetError("a dataset needs at least one pair")
        if self.crop_size is not None and self.crop_size < 1:
            raise DatasetError(f"crop_size must be positive, got {self.crop_size}")
        if self.repeats < 1:
            raise DatasetError(f"repeats must be at least 1, got {self.repeats}")

    def __len__(self) -> int:
        return len(self.pairs) * self.repeats

    def set_epoch(self, epoch: int) -> None:
        """Use the augmentation draws of this epoch."""
        self.epoch = epoch

    def pair(self, index: int) -> ChangePair:
        """The raw pair at ``index`` (read, then cached when ``cache``)."""
        if index in self._cache:
            return self._cache[index]
        loaded = self.pairs[index].load()
        if self.cache:
            self._cache[index] = loaded
        return loaded

    @property
    def keys(self) -> list[str]:
        """Pair keys in order."""
        return [p.key for p in self.pairs]

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        pair = self.pair(index % len(self.pairs))
        target = change_target(pair.label, ignore_value=self.ignore_value)
        arrays: list[Array] = [pair.before, pair.after, target]
        fills: list[float] = [0.0, 0.0, float(IGNORE_INDEX)]
        has_classes = pair.class_before is not None and pair.class_after is not None
        if has_classes:
            assert pair.class_before is not None and pair.class_after is not None
            arrays += [pair.class_before, pair.class_after]
            fills += [float(IGNORE_INDEX), float(IGNORE_INDEX)]
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            contain = None
            if self.crop_size is not None and self.focus_change > 0 and rng.random() < self.focus_change:
                changed = np.flatnonzero(target == 1)
                if changed.size:
                    pick = int(changed[rng.integers(0, changed.size)])
                    contain = divmod(pick, target.shape[1])
            arrays = augment_arrays(arrays, rng, crop_size=self.crop_size, pad_values=fills, contain=contain)
        elif self.crop_size is not None:
            arrays = [_top_left(a, self.crop_size, fill) for a, fill in zip(arrays, fills, strict=True)]
        return Sample(
            before=torch.from_numpy(np.asarray(arrays[0], dtype=np.float32)),
            after=torch.from_numpy(np.asarray(arrays[1], dtype=np.float32)),
            target=torch.from_numpy(np.asarray(arrays[2], dtype=np.int64)),
            class_before=torch.from_numpy(np.asarray(arrays[3], dtype=np.int64)) if has_classes else None,
            class_after=torch.from_numpy(np.asarray(arrays[4], dtype=np.int64)) if has_classes else None,
            key=self.pairs[index % len(self.pairs)].key,
        )


def _top_left(array: Array, size: int | None, fill: float) -> Array:
    if size is None:
        return array
    height, width = array.shape[-2:]
    pad = [(0, 0)] * (array.ndim - 2) + [(0, max(0, size - height)), (0, max(0, size - width))]
    return np.ascontiguousarray(np.pad(array, pad, constant_values=fill)[..., :size, :size])


def value_scale(dtype: np.dtype[np.generic] | type) -> float:
    """Factor from raw values of ``dtype`` to [0, 1] or reflectance.

    ``uint8`` -> ``1 / 255``; ``uint16`` -> ``1e-4`` (Sentinel-2/Landsat-style digital numbers);
    anything else (float reflectance) -> ``1``.
    """
    kind = np.dtype(dtype)
    if kind == np.uint8:
        return 1 / 255
    if kind == np.uint16:
        return 1e-4
    return 1.0


def default_band_names(count: int) -> tuple[str, ...]:
    """``("red", "green", "blue")`` for 3 bands, ``("b1", "b2", ...)`` otherwise."""
    if count == 3:
        return ("red", "green", "blue")
    return tuple(f"b{i + 1}" for i in range(count))


def band_statistics(
    pairs: Sequence[PairSource], scale: float, *, max_pixels: int = 2_000_000, seed: int = 0
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band mean and standard deviation of ``value * scale`` over both dates of some pairs.

    Parameters
    ----------
    pairs
        The (training) pairs.
    scale
        Factor applied to raw values first.
    max_pixels
        At most this many pixels per date are drawn in all (evenly from each pair, seeded).
    seed
        Seed of the draw.

    Returns
    -------
    mean, std
        Tuples with one value per band (std at least 1e-6).
    """
    rng = np.random.default_rng(seed)
    per_pair = max(1, max_pixels // max(1, len(pairs)))
    chunks: list[NDArray[np.float64]] = []
    for source in pairs:
        pair = source.load()
        for image in (pair.before, pair.after):
            flat = image.reshape(image.shape[0], -1).astype(np.float64) * scale
            if flat.shape[1] > per_pair:
                flat = flat[:, rng.choice(flat.shape[1], per_pair, replace=False)]
            chunks.append(flat)
    values = np.concatenate(chunks, axis=1)
    mean = np.nanmean(values, axis=1)
    std = np.maximum(np.nanstd(values, axis=1), 1e-6)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


@dataclass(frozen=True)
class Split:
    """Pair keys of the train, validation and test parts (whole source images each).

    Attributes
    ----------
    train, val, test
        Sorted pair keys (``dataset/name``).
    seed
        Seed the split was drawn with.
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    seed: int = 0

    def part(self, name: PartName) -> tuple[str, ...]:
        """Keys of one part."""
        if name not in ("train", "val", "test"):
            raise DatasetError(f"unknown split part {name!r}; choose train, val or test")
        keys: tuple[str, ...] = getattr(self, name)
        return keys

    def select(self, pairs: Sequence[PairSource], name: PartName) -> list[PairSource]:
        """The pairs of one part, in the order given.

        Raises
        ------
        DatasetError
            When a key of the part is not among ``pairs`` (the split was made for other data).
        """
        wanted = self.part(name)
        by_key = {p.key: p for p in pairs}
        missing = [k for k in wanted if k not in by_key]
        if missing:
            raise DatasetError(
                f"the split's {name} part names {len(missing)} pair(s) not in the data, e.g. "
                f"{missing[0]!r}; use the split made for these data folders"
            )
        chosen = set(wanted)
        return [p for p in pairs if p.key in chosen]

    def to_json(self) -> str:
        """JSON text (see :meth:`from_json`)."""
        return json.dumps(
            {"seed": self.seed, "train": list(self.train), "val": list(self.val), "test": list(self.test)},
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Split:
        """Read :meth:`to_json` output.

        Raises
        ------
        DatasetError
            For malformed text or a key in two parts.
        """
        try:
            data = json.loads(text)
            split = cls(
                tuple(str(k) for k in data["train"]),
                tuple(str(k) for k in data.get("val", [])),
                tuple(str(k) for k in data.get("test", [])),
                int(data.get("seed", 0)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(
                f"malformed split file ({exc}); expected JSON with train, val, test key lists"
            ) from exc
        overlap = (set(split.train) & set(split.val)) | (
            (set(split.train) | set(split.val)) & set(split.test)
        )
        if overlap:
            raise DatasetError(
                f"pair {sorted(overlap)[0]!r} is in two parts of the split; fix the split file"
            )
        return split

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_json` to a file."""
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Split:
        """Read a split file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"split file {path} not found; write one with train --holdout-fraction")
        return cls.from_json(path.read_text())


def _take_sources(
    sources: list[str], counts: dict[str, int], fraction: float, keep_one: bool
) -> tuple[list[str], list[str]]:
    """Move sources from the front of ``sources`` until ``fraction`` of their tiles is taken."""
    if fraction <= 0 or len(sources) < 2:
        return [], sources
    total = sum(counts[s] for s in sources)
    goal = fraction * total
    taken: list[str] = []
    count = 0
    rest = list(sources)
    while rest and (not taken or count + counts[rest[0]] / 2 <= goal):
        if keep_one and len(rest) == 1:
            break
        source = rest.pop(0)
        taken.append(source)
        count += counts[source]
    return taken, rest


def split_by_source(
    pairs: Sequence[PairSource],
    *,
    test_fraction: float = 0.0,
    val_fraction: float = 0.1,
    seed: int = 0,
    source_of: Callable[[PairSource], str] | None = None,
) -> Split:
    """Split pairs into train, validation and test parts by source image, per dataset.

    Within each dataset the source images are shuffled (seeded) and whole sources are moved to
    the test part until it holds about ``test_fraction`` of that dataset's tiles, then to the
    validation part until it holds about ``val_fraction`` of what is left; the rest is training.
    A part with a positive fraction gets at least one source when the dataset has two or more,
    and the training part always keeps one. A dataset with a single source goes to training.

    Parameters
    ----------
    pairs
        All pairs.
    test_fraction, val_fraction
        Target shares of tiles, each in ``[0, 1)``.
    seed
        Seed of the shuffle.
    source_of
        Source key of a pair; default ``pair.source_key``.

    Returns
    -------
    Split
        No source image is in two parts.
    """
    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not (0.0 <= value < 1.0) or math.isnan(value):
            raise DatasetError(f"{name} must lie in [0, 1), got {value}")
    get_source = source_of or (lambda p: p.source_key)
    by_dataset: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for pair in pairs:
        dataset = pair.key.split("/", 1)[0]
        by_dataset[dataset][get_source(pair)].append(pair.key)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for dataset in sorted(by_dataset):
        groups = by_dataset[dataset]
        counts = {s: len(keys) for s, keys in groups.items()}
        sources = sorted(groups)
        sources = [sources[i] for i in rng.permutation(len(sources))]
        test, rest = _take_sources(sources, counts, test_fraction, keep_one=True)
        val, train = _take_sources(rest, counts, val_fraction, keep_one=True)
        for part, chosen in (("test", test), ("val", val), ("train", train)):
            parts[part].extend(k for s in chosen for k in groups[s])
    return Split(
        tuple(sorted(parts["train"])), tuple(sorted(parts["val"])), tuple(sorted(parts["test"])), seed
    )
