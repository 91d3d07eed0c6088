"""Names and shapes of the change cube: format, layers, nodata values, root attributes, block grid."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from pipeline.tiling import Window

__all__ = [
    "ATTR_BLOCK_SIZE",
    "ATTR_CLASSES",
    "ATTR_COMPLETE",
    "ATTR_FINGERPRINT",
    "ATTR_FORMAT",
    "ATTR_INFERENCE",
    "ATTR_JOB",
    "ATTR_MODELS",
    "ATTR_MODEL_FIT",
    "ATTR_PROMPTS",
    "ATTR_SOFTWARE",
    "ATTR_SOFTWARE_VERSION",
    "ATTR_TILING",
    "ATTR_TORCH_THREADS",
    "DONE",
    "FORMAT",
    "LAYERS",
    "NODATA",
    "TRANSITION_NODATA",
    "TRANSITION_NO_CHANGE",
    "UINT8_NODATA",
    "BlockGrid",
    "BlockLayers",
    "ChangeCubeLayout",
]

#: Value of the ``format`` root attribute of a change cube.
FORMAT = "seg2change-change-cube/1"
#: Nodata of the uint8 layers.
UINT8_NODATA = 255
#: Transition code of valid pixels that did not change.
TRANSITION_NO_CHANGE = 65534
#: Transition code of nodata pixels.
TRANSITION_NODATA = 65535
#: Name of the per-block completion marker array.
DONE = "block_done"
#: The spatial layers, in writing order.
LAYERS = ("change_probability", "change", "class_before", "class_after", "transition", "target_change")

#: Nodata (and initial value) of each layer.
NODATA: dict[str, Any] = {
    "change_probability": np.float32("nan"),
    "change": np.uint8(UINT8_NODATA),
    "class_before": np.uint8(UINT8_NODATA),
    "class_after": np.uint8(UINT8_NODATA),
    "transition": np.uint16(TRANSITION_NODATA),
    "target_change": np.uint8(UINT8_NODATA),
}

#: Root attribute: :data:`FORMAT`, what marks a store as a change cube.
ATTR_FORMAT = "format"
#: Root attribute: the job (JSON).
ATTR_JOB = "job"
#: Root attribute: the inference-relevant fields the fingerprint hashes (JSON).
ATTR_INFERENCE = "inference"
#: Root attribute: the job fingerprint; a cube is reused only by a job of the same fingerprint.
ATTR_FINGERPRINT = "fingerprint"
#: Root attribute: the models' name, source and checkpoint SHA-256 (JSON).
ATTR_MODELS = "models"
#: Root attribute: values fitted once per job (JSON).
ATTR_MODEL_FIT = "model_fit"
#: Root attribute: the software that wrote the cube.
ATTR_SOFTWARE = "software"
#: Root attribute: the version of the software that ran the inference.
ATTR_SOFTWARE_VERSION = "software_version"
#: Root attribute: the tiling the inference used (JSON).
ATTR_TILING = "tiling"
#: Root attribute: the prompts the inference used (JSON).
ATTR_PROMPTS = "prompts"
#: Root attribute: the torch threads per worker of the run that created the cube (JSON); a resumed run keeps them.
ATTR_TORCH_THREADS = "torch_threads"
#: Root attribute: the side of the square blocks (and chunks).
ATTR_BLOCK_SIZE = "block_size"
#: Root attribute: the class labels in channel order (JSON).
ATTR_CLASSES = "classes"
#: Root attribute: true once every block is done.
ATTR_COMPLETE = "complete"


@dataclass(frozen=True)
class BlockGrid:
    """Square blocks of ``block_size`` pixels covering a ``height x width`` cube from its origin."""

    height: int
    width: int
    block_size: int

    @property
    def shape(self) -> tuple[int, int]:
        """Number of blocks ``(rows, cols)``."""
        return -(-self.height // self.block_size), -(-self.width // self.block_size)

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols

    def window(self, row: int, col: int) -> Window:
        """Pixels of block ``(row, col)`` (edge blocks are clipped to the cube)."""
        b = self.block_size
        return Window(row * b, min((row + 1) * b, self.height), col * b, min((col + 1) * b, self.width))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rows, cols = self.shape
        for row in range(rows):
            for col in range(cols):
                yield row, col


@dataclass(frozen=True)
class ChangeCubeLayout:
    """What fixes the shape of a change cube.

    Attributes
    ----------
    blocks
        The block grid (also the chunk grid).
    classes
        Class labels in channel order.
    targets
        Target class labels (the ``target`` dimension).
    zarr_format
        2 or 3.
    """

    blocks: BlockGrid
    classes: tuple[str, ...]
    targets: tuple[str, ...]
    zarr_format: Literal[2, 3] = 3


@dataclass(frozen=True)
class BlockLayers:
    """The output layers of one block, each ``(rows, cols)`` except ``target_change`` ``(T, rows, cols)``."""

    change_probability: NDArray[np.float32]
    change: NDArray[np.uint8]
    class_before: NDArray[np.uint8]
    class_after: NDArray[np.uint8]
    transition: NDArray[np.uint16]
    target_change: NDArray[np.uint8]

    def items(self) -> Iterator[tuple[str, NDArray[Any]]]:
        """``(name, array)`` pairs in :data:`LAYERS` order."""
        for name in LAYERS:
            yield name, getattr(self, name)
