"""Change through time: a job over N >= 2 windows, run pair by pair into one sequence cube.

:mod:`~pipeline.sequence.spec` (the validated sequence: base job and windows),
:mod:`~pipeline.sequence.cube` (the sequence cube: pairs stacked, date layers) and
:mod:`~pipeline.sequence.run` (running and appending).
"""

from pipeline.sequence.cube import SEQUENCE_CUBE, open_sequence_cube
from pipeline.sequence.run import SequenceResult, run_sequence
from pipeline.sequence.spec import SequenceSpec, parse_period, period_windows

__all__ = [
    "SEQUENCE_CUBE",
    "SequenceResult",
    "SequenceSpec",
    "open_sequence_cube",
    "parse_period",
    "period_windows",
    "run_sequence",
]
