"""The common folder layout of LEVIR-CD, WHU-CD, DSIFN-CD and CA-CDD.

Folder layout
-------------
::

    root/
      A/<name>.png        date 1 (any band count; PNG, JPG or TIF)
      B/<name>.png        date 2, same size and band count as A
      label/<name>.png    change mask, same height and width (one band)
      label_A/<name>.png  optional: class map of date 1 (semantic change)
      label_B/<name>.png  optional: class map of date 2

Pairs are matched by file stem; a file without a partner, two files with one stem, or a size that
differs is a :class:`~seg2change_core.errors.DatasetError` naming the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from seg2change_core.datasets.images import IMAGE_SUFFIXES, _image_shape
from seg2change_core.datasets.labels import LabelEncoding, detect_files_encoding
from seg2change_core.datasets.pairs import FolderPair
from seg2change_core.errors import DatasetError

__all__ = ["scan_folder", "scan_folders"]


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
    label_encoding: LabelEncoding | None = None,
    ignore_value: int | None = None,
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
    label_encoding
        How the labels encode change. ``None`` reads every label and detects one encoding for
        the whole folder (:func:`~seg2change_core.datasets.detect_files_encoding`), so tiles
        without change (only 0s) are read like the others.
    ignore_value
        Raw label value declared as "not labelled" (added to the encoding).

    Returns
    -------
    list of FolderPair
        Sorted by name.

    Raises
    ------
    DatasetError
        Missing folders, files without a partner, duplicate names, no pairs, sizes that differ,
        or labels whose encoding cannot be detected.
    """
    root = Path(root)
    folders, use_classes = _layout(root, semantic)
    listed = {name: _stems(path) for name, path in folders.items()}
    names = _matched_names(listed, folders)
    if not names:
        raise DatasetError(f"{root}/A holds no images ({', '.join(IMAGE_SUFFIXES)}); add pairs")
    ds_name = dataset or root.resolve().name
    if label_encoding is None:
        label_files = [listed["label"][name] for name in names]
        encoding = detect_files_encoding(
            label_files, ignore_value=ignore_value, where=f"the labels in {folders['label']}"
        )
    else:
        encoding = label_encoding.with_ignore(ignore_value)
    pairs = [
        FolderPair(
            name,
            ds_name,
            listed["A"][name],
            listed["B"][name],
            listed["label"][name],
            listed["label_A"][name] if use_classes else None,
            listed["label_B"][name] if use_classes else None,
            encoding,
        )
        for name in names
    ]
    if check_sizes:
        for pair in pairs:
            _check_pair_shapes(pair)
    return pairs


def _layout(root: Path, semantic: bool | None) -> tuple[dict[str, Path], bool]:
    """The sub-folders to read (``A``, ``B``, ``label`` and maybe the class maps), and whether class maps are read."""
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
    return folders, use_classes


def _matched_names(listed: dict[str, dict[str, Path]], folders: dict[str, Path]) -> list[str]:
    """The pair names, sorted, once every name has a file in every folder."""
    names = set().union(*(set(files) for files in listed.values()))
    for name in sorted(names):
        for folder, files in listed.items():
            if name not in files:
                have = next(files_[name] for files_ in listed.values() if name in files_)
                raise DatasetError(
                    f"{have} has no partner in {folders[folder]}/; every pair needs one file named "
                    f"{name}.* in each of {', '.join(f'{f}/' for f in folders)}"
                )
    return sorted(names)


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


def scan_folders(
    roots: Iterable[str | Path],
    *,
    semantic: bool | None = None,
    label_encoding: LabelEncoding | None = None,
    ignore_value: int | None = None,
) -> list[FolderPair]:
    """:func:`scan_folder` over several datasets; the datasets must have different names.

    Each folder's label encoding is detected on its own unless ``label_encoding`` declares one
    for all. :func:`~seg2change_core.datasets.scan_datasets` also reads OSCD folders.

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
        pairs.extend(
            scan_folder(path, semantic=semantic, label_encoding=label_encoding, ignore_value=ignore_value)
        )
    return pairs
