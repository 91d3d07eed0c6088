"""Publish a sequence: statistics over time, COGs of the date layers, quick-looks and the STAC.

What a sequence's output folder holds once published::

    <output>/
        sequence.zarr                  the sequence cube (pipeline.sequence.cube)
        sequence_statistics.parquet    changed area per period x zone x kind x class
                                       (pipeline.sequence.statistics)
        cogs/<layer>.tif               COGs of the date layers (first/last change, number of changes,
                                       each target's first change; pipeline.sequence.cogs)
        sequence_strip.png             a column per window, and an animated GIF with a frame per
        sequence.gif                   pair (pipeline.sequence.quicklook)
        stac/collection.json           the sequence's STAC Collection (datacube extension) and one
        stac/<NNN_start_start>.json    Item per pair (pipeline.sequence.stac)
        pairs/<NNN_start_start>/       each pair's own job outputs

:func:`publish_sequence` writes them from what is on disk (the pairs stacked in the sequence cube
so far), so it can run again at any time; :func:`~pipeline.sequence.run.run_sequence` calls it
after the pairs, and an appended window rewrites them from the extended cube. Each file is
replaced atomically, the STAC Collection last, so a failure leaves the earlier files as they were.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PublishError
from pipeline.layout import COGS
from pipeline.publish.cogs import COG_MEDIA_TYPE
from pipeline.publish.publishers import PARQUET_MEDIA_TYPE
from pipeline.sequence.cogs import write_date_layer_cogs
from pipeline.sequence.cube import SEQUENCE_CUBE, open_sequence_cube, pairs_done
from pipeline.sequence.quicklook import write_sequence_quicklooks
from pipeline.sequence.spec import SequenceSpec
from pipeline.sequence.stac import SequenceAsset, SequenceStac, write_sequence_stac
from pipeline.sequence.statistics import SEQUENCE_STATISTICS, write_sequence_statistics

__all__ = ["SequencePublication", "publish_sequence"]


@dataclass(frozen=True)
class SequencePublication:
    """What :func:`publish_sequence` wrote.

    Attributes
    ----------
    pairs
        The pairs published (those stacked in the sequence cube).
    statistics
        ``sequence_statistics.parquet``.
    cogs
        The COG of each date layer, by layer name (:func:`~pipeline.sequence.cogs.write_date_layer_cogs`).
    quicklooks
        ``{"strip": <png>, "animation": <gif>}`` (:func:`~pipeline.sequence.quicklook.write_sequence_quicklooks`).
    stac
        The STAC Collection and Items, and what their validation checked.
    """

    pairs: int
    statistics: Path
    cogs: Mapping[str, Path]
    quicklooks: Mapping[str, Path]
    stac: SequenceStac


def publish_sequence(spec: SequenceSpec, cube: Path | None = None) -> SequencePublication:
    """Write the sequence's statistics over time, date-layer COGs, quick-looks and STAC from the pairs
    stacked in its cube.

    Parameters
    ----------
    spec
        The sequence (its windows may go beyond the cube's: only the stacked pairs are published).
    cube
        The sequence cube; default ``sequence.zarr`` in the sequence's output folder.

    Returns
    -------
    SequencePublication

    Raises
    ------
    OutputExistsError
        When there is no sequence cube, or it was made for another base job or windows.
    PublishError
        When the cube holds no pair yet, or a pair's outputs are missing; earlier files are kept.
    """
    root = Path(spec.output)
    cube = root / SEQUENCE_CUBE if cube is None else Path(cube)
    open_sequence_cube(cube)
    pairs = pairs_done(cube, spec.window_dates(), spec.base)
    if pairs < 1:
        raise PublishError(f"the sequence cube {cube} holds no pair yet; run the sequence first")
    statistics = write_sequence_statistics(spec, pairs, root / SEQUENCE_STATISTICS)
    cogs = write_date_layer_cogs(cube, root / COGS)
    quicklooks = write_sequence_quicklooks(cube, root)
    assets = [
        SequenceAsset(
            "statistics",
            statistics,
            PARQUET_MEDIA_TYPE,
            ("data", "metadata"),
            "changed area per pair, zone, kind and class (Parquet)",
        ),
        *(
            SequenceAsset(
                name, path, COG_MEDIA_TYPE, ("data",), f"{name.replace('_', ' ')} (COG, window numbers)"
            )
            for name, path in cogs.items()
        ),
        SequenceAsset("strip", quicklooks["strip"], "image/png", ("overview",), "a column per window (PNG)"),
        SequenceAsset(
            "animation", quicklooks["animation"], "image/gif", ("overview",), "a frame per pair (GIF)"
        ),
    ]
    stac = write_sequence_stac(spec, pairs, assets)
    return SequencePublication(pairs, statistics, cogs, quicklooks, stac)
