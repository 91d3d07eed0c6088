"""One bi-temporal pair: in memory (:class:`ChangePair`) or as files (:class:`FolderPair`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from seg2change_core.datasets.images import Array, _single_band, read_image
from seg2change_core.datasets.labels import LabelEncoding
from seg2change_core.datasets.splits import source_image
from seg2change_core.errors import DatasetError

__all__ = ["ChangePair", "FolderPair", "PairSource"]


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
    label_encoding
        How ``label`` encodes change (see :class:`~seg2change_core.datasets.LabelEncoding`);
        ``None`` detects it from this label's values alone when the pair is used.
    """

    name: str
    dataset: str
    before: Array
    after: Array
    label: Array
    class_before: Array | None = None
    class_after: Array | None = None
    source: str | None = None
    label_encoding: LabelEncoding | None = None

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
    label_encoding
        How the dataset's labels encode change (declared, or detected per dataset folder by
        :func:`~seg2change_core.datasets.scan_folder`); ``None`` detects it per label.
    """

    name: str
    dataset: str
    before: Path
    after: Path
    label: Path
    class_before: Path | None = None
    class_after: Path | None = None
    label_encoding: LabelEncoding | None = None

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
            label_encoding=self.label_encoding,
        )
