"""Change through time: a job over N >= 2 windows, run pair by pair into one sequence cube.

:mod:`~pipeline.sequence.spec` (the validated sequence: base job and windows),
:mod:`~pipeline.sequence.windows` (each window's composite, once, along ``time``; the pairs' inputs
cut from it), :mod:`~pipeline.sequence.cube` (the sequence cube: pairs stacked, date layers) and
:mod:`~pipeline.sequence.run` (running and appending) and :mod:`~pipeline.sequence.publish`
(statistics over time, date-layer COGs, quick-looks, STAC).

The cube and run names load on first use, so that reading a sequence file (the command line's
check before any work) does not import Zarr or Dask.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipeline.sequence.spec import SequenceSpec, parse_period, period_windows

if TYPE_CHECKING:
    from pipeline.sequence.cube import SEQUENCE_CUBE, open_sequence_cube
    from pipeline.sequence.publish import SequencePublication, publish_sequence
    from pipeline.sequence.run import SequenceResult, run_sequence

__all__ = [
    "SEQUENCE_CUBE",
    "SequencePublication",
    "SequenceResult",
    "SequenceSpec",
    "open_sequence_cube",
    "parse_period",
    "period_windows",
    "publish_sequence",
    "run_sequence",
]

_LAZY = {
    "SEQUENCE_CUBE": "pipeline.sequence.cube",
    "open_sequence_cube": "pipeline.sequence.cube",
    "SequencePublication": "pipeline.sequence.publish",
    "publish_sequence": "pipeline.sequence.publish",
    "SequenceResult": "pipeline.sequence.run",
    "run_sequence": "pipeline.sequence.run",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
