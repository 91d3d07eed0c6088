"""Recognise and list datasets of any supported layout: A/B/label folders and OSCD.

:func:`scan_datasets` takes each folder given on the command line and recognises

* an **A/B/label folder** (LEVIR-CD, WHU-CD, DSIFN-CD, ...; see
  :mod:`~seg2change_core.datasets.folder`),
* an **OSCD root** (a folder of city folders with ``imgs_1/``, ``imgs_2/`` and ``cm/``), or
* **one OSCD city** folder (see :mod:`~seg2change_core.datasets.oscd`),

so that ``seg2change train`` and ``seg2change evaluate`` accept any of them. Label encodings are
detected per dataset folder unless declared.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from seg2change_core.datasets.bands import select_bands
from seg2change_core.datasets.folder import scan_folder
from seg2change_core.datasets.labels import LabelEncoding
from seg2change_core.datasets.oscd import is_oscd_city, is_oscd_root, scan_oscd
from seg2change_core.datasets.pairs import PairSource
from seg2change_core.errors import DatasetError

__all__ = ["DatasetKind", "dataset_kind", "dataset_of", "scan_datasets"]

DatasetKind = Literal["folder", "oscd", "oscd_city"]


def dataset_kind(root: str | Path) -> DatasetKind:
    """The layout of a dataset folder.

    Raises
    ------
    DatasetError
        When the folder is missing or has none of the layouts, naming them.
    """
    path = Path(root)
    if not path.is_dir():
        raise DatasetError(
            f"dataset folder {path} does not exist; give a folder with A/, B/ and label/, or an OSCD "
            "folder of cities"
        )
    if (path / "A").is_dir() or (path / "B").is_dir() or (path / "label").is_dir():
        return "folder"
    if is_oscd_city(path):
        return "oscd_city"
    if is_oscd_root(path):
        return "oscd"
    raise DatasetError(
        f"{path} is not a change dataset: expected A/ (date 1), B/ (date 2) and label/ (change mask), "
        "or an OSCD folder of <city>/imgs_1, <city>/imgs_2 and <city>/cm (or one such city)"
    )


def dataset_of(source: PairSource) -> str:
    """The dataset name of a pair source (its key before the first ``/``)."""
    return source.key.split("/", 1)[0]


def scan_datasets(
    roots: Iterable[str | Path],
    *,
    semantic: bool | None = None,
    bands: Sequence[str] | None = None,
    label_encoding: LabelEncoding | None = None,
    ignore_value: int | None = None,
) -> list[PairSource]:
    """List the pairs of several datasets of any supported layout.

    Parameters
    ----------
    roots
        Dataset folders (see the module docstring).
    semantic
        For A/B/label folders: require, ignore or use when present the class maps.
    bands
        Bands to keep, in order (:func:`~seg2change_core.datasets.select_bands`); ``None``
        keeps all.
    label_encoding
        Declared label encoding of every dataset; ``None`` detects one per dataset folder.
    ignore_value
        Raw label value declared as "not labelled".

    Returns
    -------
    list of PairSource
        Pairs of each dataset in the order given, each dataset's sorted by name.

    Raises
    ------
    DatasetError
        As the layout's scanner, or when two folders give pairs of one key (rename one).
    """
    pairs: list[PairSource] = []
    seen: dict[str, Path] = {}
    for root in roots:
        path = Path(root)
        kind = dataset_kind(path)
        found: list[PairSource]
        if kind == "folder":
            found = list(
                scan_folder(path, semantic=semantic, label_encoding=label_encoding, ignore_value=ignore_value)
            )
        else:
            found = list(scan_oscd(path, label_encoding=label_encoding, ignore_value=ignore_value))
        for pair in found:
            if pair.key in seen:
                raise DatasetError(
                    f"{path} and {seen[pair.key]} both give the pair {pair.key!r}; datasets must have "
                    "different folder names (rename one of them)"
                )
            seen[pair.key] = path
        pairs.extend(found)
    if bands is not None:
        pairs = select_bands(pairs, bands)
    return pairs
