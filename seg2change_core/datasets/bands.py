"""Which bands a pair source has and how to select them: by name where named, by position otherwise.

Some sources know their bands' names (:class:`~seg2change_core.datasets.OSCDCity`: Sentinel-2
common names); they implement :class:`NamedBandSource` and read only the bands selected. Folder
datasets (PNG/JPG/GeoTIFF in ``A/`` and ``B/``) do not: their bands go by position and take the
names of :func:`~seg2change_core.datasets.default_band_names` (``red, green, blue`` for three
bands, ``b1 .. bN`` otherwise; ``bN`` is also accepted for RGB), and :class:`SelectedBands` picks
channels from them.

A model names the bands it expects (its ``InputNormalisation.bands``). :func:`bands_for_model`
gives it those bands by name from a named source, and by position from an unnamed one (where the
band count must then agree); a mismatch is a :class:`~seg2change_core.errors.DatasetError` that
says what the model expects and what the data has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from seg2change_core.datasets.images import _image_shape
from seg2change_core.datasets.pairs import ChangePair, FolderPair, PairSource
from seg2change_core.datasets.statistics import default_band_names
from seg2change_core.errors import DatasetError

__all__ = [
    "NamedBandSource",
    "SelectedBands",
    "band_count",
    "band_names_of",
    "bands_for_model",
    "select_bands",
]


@runtime_checkable
class NamedBandSource(Protocol):
    """A pair source whose bands have names and which can read a subset of them."""

    @property
    def key(self) -> str:
        """``dataset/name``."""
        ...

    @property
    def source_key(self) -> str:
        """``dataset/source image``."""
        ...

    @property
    def band_names(self) -> tuple[str, ...]:
        """Names of the channels :meth:`load` returns, in order."""
        ...

    def with_bands(self, names: Sequence[str]) -> NamedBandSource:
        """The same pair reading these bands in this order (raises DatasetError for unknown names)."""
        ...

    def load(self) -> ChangePair:
        """Read the pair."""
        ...


@dataclass(frozen=True)
class SelectedBands:
    """A pair source restricted to some of its channels, by position.

    Attributes
    ----------
    source
        The full source.
    indices
        0-based channels kept, in the order wanted.
    names
        Names of the kept channels.
    """

    source: PairSource
    indices: tuple[int, ...]
    names: tuple[str, ...]

    @property
    def key(self) -> str:
        """The source's key."""
        return self.source.key

    @property
    def source_key(self) -> str:
        """The source's source key."""
        return self.source.source_key

    @property
    def band_names(self) -> tuple[str, ...]:
        """Names of the kept channels."""
        return self.names

    def with_bands(self, names: Sequence[str]) -> SelectedBands:
        """Select again among the kept channels, by name."""
        positions = _positions(self.names, names, self.key)
        return SelectedBands(self.source, tuple(self.indices[i] for i in positions), tuple(names))

    def load(self) -> ChangePair:
        """Read the source and keep the selected channels."""
        pair = self.source.load()
        keep = list(self.indices)
        if max(keep) >= pair.before.shape[0]:
            raise DatasetError(
                f"pair {pair.key} has {pair.before.shape[0]} bands; band {max(keep) + 1} was selected"
            )
        return replace(pair, before=pair.before[keep], after=pair.after[keep])


def band_count(source: PairSource) -> int:
    """Number of bands of a source (read from a file header where possible)."""
    names = band_names_of(source)
    if names is not None:
        return len(names)
    if isinstance(source, FolderPair):
        return _image_shape(source.before)[0]
    return int(source.load().before.shape[0])


def band_names_of(source: PairSource) -> tuple[str, ...] | None:
    """The band names a source declares, or ``None`` for bands known only by position."""
    if isinstance(source, NamedBandSource):
        return tuple(source.band_names)
    return None


def _positions(have: Sequence[str], wanted: Sequence[str], key: str) -> list[int]:
    lookup = {name.lower(): i for i, name in enumerate(have)}
    lookup.update({f"b{i + 1}": i for i in range(len(have)) if f"b{i + 1}" not in lookup})
    missing = [name for name in wanted if name.lower() not in lookup]
    if missing:
        raise DatasetError(
            f"{key} has no band(s) {', '.join(missing)}; its bands are {', '.join(have)} "
            f"(or b1..b{len(have)} by position)"
        )
    return [lookup[name.lower()] for name in wanted]


def select_bands(sources: Sequence[PairSource], bands: Sequence[str]) -> list[PairSource]:
    """Keep the named bands of every source, in the order given.

    Named sources (:class:`NamedBandSource`) select by their own names (OSCD also takes
    Sentinel-2 ids such as ``B8A``); unnamed ones by :func:`default_band_names` or ``bN``
    (1-based position).

    Raises
    ------
    DatasetError
        When no band is given or a source lacks one, naming the bands it has.
    """
    wanted = tuple(bands)
    if not wanted:
        raise DatasetError("select at least one band")
    out: list[PairSource] = []
    for source in sources:
        if isinstance(source, NamedBandSource):
            out.append(source.with_bands(wanted))
            continue
        names = default_band_names(band_count(source))
        positions = _positions(names, wanted, source.key)
        out.append(SelectedBands(source, tuple(positions), wanted))
    return out


def bands_for_model(
    sources: Sequence[PairSource], model_bands: Sequence[str], bands: Sequence[str] | None = None
) -> list[PairSource]:
    """Give a model the bands it expects from every source.

    Parameters
    ----------
    sources
        The pairs.
    model_bands
        The bands the model expects, in channel order (its normalisation's names).
    bands
        Bands to select first (the CLI's ``--bands``); they are then handed to the model by
        position. ``None``: named sources select the model's bands by name, unnamed ones are
        taken as they are.

    Raises
    ------
    DatasetError
        When a named source lacks one of the model's bands, or the band count differs from the
        model's, saying what the model expects and what the data has.
    """
    expected = tuple(model_bands)
    if bands is not None:
        sources = select_bands(sources, bands)
    out: list[PairSource] = []
    for source in sources:
        names = band_names_of(source)
        if bands is None and names is not None:
            try:
                out.append(select_bands([source], expected)[0])
            except DatasetError as exc:
                raise DatasetError(
                    f"the model expects the bands {', '.join(expected)}, but {exc}; use data with "
                    "these bands, or pass --bands to hand the model other bands by position"
                ) from None
            continue
        count = band_count(source)
        if count != len(expected):
            have = ", ".join(names) if names is not None else f"{count} unnamed bands"
            raise DatasetError(
                f"the model expects {len(expected)} bands ({', '.join(expected)}) but {source.key} has "
                f"{count} ({have}); pass --bands with {len(expected)} of them in the model's order"
            )
        out.append(source)
    return out
