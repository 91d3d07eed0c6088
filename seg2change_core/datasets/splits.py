"""Train / validation / test splits by source image.

Public tiles are often cut from larger source images; a test tile must not share pixels with a
training tile. :func:`source_image` maps a tile name to its source (``test_3_0512_0256`` ->
``test_3``, ``whu_000121_0000_0256`` -> ``whu_000121``, DSIFN ``4_2`` -> ``4``) and
:func:`split_by_source` assigns whole sources to the train, validation and test parts.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from seg2change_core.errors import DatasetError

if TYPE_CHECKING:
    from seg2change_core.datasets.pairs import PairSource

__all__ = ["Split", "source_image", "split_by_source"]

PartName = Literal["train", "val", "test"]


_TILE_OFFSETS = re.compile(r"^(?P<source>.+)_\d+_\d+$")
_DSIFN_TILE = re.compile(r"^(?P<source>\d+)_\d+$")


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

        A split may cover more datasets than ``pairs`` hold (one split file for several data
        folders, used with some of them): keys of datasets of which no pair is given are left out.

        Raises
        ------
        DatasetError
            When a key of a given dataset is not among ``pairs`` (the split was made for other
            data).
        """
        by_key = {p.key: p for p in pairs}
        datasets = {key.split("/", 1)[0] for key in by_key}
        wanted = [k for k in self.part(name) if k.split("/", 1)[0] in datasets]
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
