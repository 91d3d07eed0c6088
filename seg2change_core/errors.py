"""The project's one exception tree.

Every error raised on purpose by seg2change derives from :class:`Seg2ChangeError`, so a caller
can catch them all with one ``except``. Each message says what was wrong and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "DatasetError",
    "MissingBandError",
    "ModelError",
    "PromptError",
    "SegmenterError",
    "Seg2ChangeError",
]


class Seg2ChangeError(Exception):
    """Base class of every error seg2change raises on purpose."""


class ModelError(Seg2ChangeError):
    """A model was built or called with inputs it cannot take (shapes, bands, tile sizes)."""


class CheckpointError(ModelError):
    """A checkpoint is missing, unreadable or does not fit the model it is loaded into."""


class DatasetError(Seg2ChangeError):
    """A training or evaluation dataset is missing files or is laid out wrongly."""


class PromptError(Seg2ChangeError):
    """Class prompts are empty, duplicated, or name targets that are not among the classes."""


class SegmenterError(ModelError):
    """A segmenter cannot segment what it was asked for (unknown segmenter, prompt or input range)."""


class MissingBandError(SegmenterError):
    """The image lacks a band that a segmenter needs for a requested class."""
