"""The in-memory kernel of inference: models over tiles, blending, and the output layers.

Everything here works on arrays already in memory and knows nothing of Dask or of stores:
:func:`run_tiles` runs the change model and the segmenter over tiles cut from one window,
:func:`blend_tiles` blends their probabilities, :func:`derive_layers` fuses the blended
probabilities into the change cube's layers, and :func:`infer_array` chains them over a whole
array, the single-process reference of the distributed engine.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from pipeline.change_cube import TRANSITION_NO_CHANGE, TRANSITION_NODATA, UINT8_NODATA, BlockLayers
from pipeline.errors import InferenceError
from pipeline.models import LoadedModels
from pipeline.tiling import BlendAccumulator, Blender, Tile, TileGrid, Window, batched
from seg2change_core.change_model import ChangeModel
from seg2change_core.fusion import fuse
from seg2change_core.prompts import PromptSet

__all__ = [
    "F32",
    "blend_tiles",
    "compute_window",
    "derive_layers",
    "infer_array",
    "predict_fixed_batches",
    "run_tiles",
    "valid_pixels",
]

F32 = NDArray[np.float32]


def run_tiles(
    data: F32,
    halo: Window,
    tiles: Sequence[Tile],
    *,
    models: LoadedModels,
    prompts: PromptSet,
    batch_size: int,
) -> tuple[list[F32], float]:
    """Run the models on ``tiles``, cut from ``data`` (which covers ``halo``), in batches.

    Returns
    -------
    tuple
        One ``(1 + 2 * classes, rows, cols)`` float32 probability array per tile (change, classes
        before, classes after), and the seconds spent in model calls.
    """
    k = prompts.num_classes
    n_bands = data.shape[1]
    change_bands = _band_selector(models.change_bands, n_bands)
    seg_bands = _band_selector(models.segmenter_bands, n_bands)
    outputs: list[F32] = []
    model_seconds = 0.0
    for batch in batched(tiles, batch_size):
        crops = [t.window.relative_to(halo) for t in batch]
        # One (2 * n, bands, rows, cols) stack: the n tiles before, then the same n tiles after.
        pair = torch.from_numpy(np.stack([data[(epoch, slice(None), *c)] for epoch in (0, 1) for c in crops]))
        pair = pair.to(models.device)
        n = len(batch)
        start = time.perf_counter()
        with torch.inference_mode():
            for_change = pair[:, change_bands]
            change = predict_fixed_batches(
                models.change,
                for_change[:n],
                for_change[n:],
                1 if models.device.type == "cpu" else batch_size,
            )
            classes = models.segmenter.segment(pair[:, seg_bands], prompts)
            out = torch.cat([change, classes[:n], classes[n:]], dim=1).to(torch.float32).cpu().numpy()
        model_seconds += time.perf_counter() - start
        if out.shape[1] != 1 + 2 * k:
            raise InferenceError(
                f"the models returned {out.shape[1]} channels per tile, expected {1 + 2 * k} "
                f"(1 change + {k} classes per date); check the segmenter against the prompts"
            )
        outputs.extend(out[i] for i in range(n))
    return outputs, model_seconds


def predict_fixed_batches(
    model: ChangeModel, before: torch.Tensor, after: torch.Tensor, size: int
) -> torch.Tensor:
    """A change model's probabilities for ``n`` tiles, computed ``size`` tiles per call.

    The last call is padded to ``size`` tiles by repeating its last tile. A model's kernels may
    depend on the batch size (oneDNN and cuDNN choose other convolution kernels for other sizes:
    the conv-backbone CACH differs by up to 1e-5 between a tile alone and in a batch of eight),
    so a tile's probability must not depend on how many tiles its block happened to batch with it;
    with one batch size, it does not (the other tiles of a batch never enter its computation). On
    a CPU, one tile per call costs no more than larger batches; a GPU keeps its batches.

    Parameters
    ----------
    model
        The change model.
    before, after
        ``(n, bands, rows, cols)`` raw tiles.
    size
        Tiles per model call.

    Returns
    -------
    torch.Tensor
        ``(n, 1, rows, cols)``.
    """
    parts = []
    for start in range(0, before.shape[0], size):
        b, a = before[start : start + size], after[start : start + size]
        count = b.shape[0]
        if count < size:
            b = torch.cat([b, b[-1:].expand(size - count, *b.shape[1:])])
            a = torch.cat([a, a[-1:].expand(size - count, *a.shape[1:])])
        parts.append(model.predict(b, a)[:count])
    return torch.cat(parts)


def blend_tiles(
    target: Window,
    tiles: Sequence[Tile],
    outputs: Sequence[F32],
    *,
    blender: Blender,
) -> F32:
    """Blend the tiles' probabilities over ``target`` (tiles in grid order, each covering part of it)."""
    accumulator = BlendAccumulator(target, outputs[0].shape[0], blender, tiles)
    for tile, probabilities in zip(tiles, outputs, strict=True):
        accumulator.add(tile, probabilities)
    return accumulator.result()


def valid_pixels(data: F32, inside: tuple[slice, slice], models: LoadedModels) -> NDArray[np.bool_]:
    """Pixels of ``data[..., rows, cols]`` where every band a model reads is finite on both dates."""
    used = sorted(set(models.change_bands) | set(models.segmenter_bands))
    rows, cols = inside
    return np.asarray(np.isfinite(data[:, used, rows, cols]).all(axis=(0, 1)), dtype=bool)


def derive_layers(blended: F32, valid: NDArray[np.bool_], prompts: PromptSet) -> BlockLayers:
    """The output layers from blended probabilities: fusion, then nodata where ``valid`` is False."""
    k = prompts.num_classes
    fused = fuse(
        torch.from_numpy(blended[None, :1]),
        torch.from_numpy(blended[None, 1 : 1 + k]),
        torch.from_numpy(blended[None, 1 + k :]),
        prompts,
    )
    transition = fused.transition[0, 0].numpy()
    transition = np.where(transition < 0, TRANSITION_NO_CHANGE, transition)
    return BlockLayers(
        change_probability=np.where(valid, blended[0], np.float32("nan")).astype(np.float32),
        change=_masked(fused.change[0, 0].numpy(), valid, UINT8_NODATA, np.uint8),
        class_before=_masked(fused.class_before[0, 0].numpy(), valid, UINT8_NODATA, np.uint8),
        class_after=_masked(fused.class_after[0, 0].numpy(), valid, UINT8_NODATA, np.uint8),
        transition=_masked(transition, valid, TRANSITION_NODATA, np.uint16),
        target_change=_masked(fused.per_target[0].numpy(), valid[None], UINT8_NODATA, np.uint8),
    )


def compute_window(
    data: F32,
    halo: Window,
    target: Window,
    *,
    models: LoadedModels,
    prompts: PromptSet,
    grid: TileGrid,
    blender: Blender,
    batch_size: int,
) -> tuple[BlockLayers, float, int]:
    """Compute the output layers of ``target`` from the input ``data`` that covers ``halo``, in one go.

    Parameters
    ----------
    data
        ``(2, bands, rows, cols)`` reflectance of ``halo`` (cube band order, NaN nodata).
    halo
        The window ``data`` holds; must contain every grid tile intersecting ``target``.
    target
        The window to produce.
    models, prompts
        Built models and the classes.
    grid, blender, batch_size
        Tile grid, blending windows and tiles per model call.

    Returns
    -------
    tuple
        The layers, seconds spent in model calls, and the number of tiles computed.
    """
    tiles = grid.tiles_intersecting(target)
    outputs, model_seconds = run_tiles(
        data, halo, tiles, models=models, prompts=prompts, batch_size=batch_size
    )
    blended = blend_tiles(target, tiles, outputs, blender=blender)
    layers = derive_layers(blended, valid_pixels(data, target.relative_to(halo), models), prompts)
    return layers, model_seconds, len(tiles)


def _band_selector(indices: tuple[int, ...], n_bands: int) -> slice | list[int]:
    """Index of the bands a model reads: a view (no copy) when it reads all bands in cube order."""
    return slice(None) if indices == tuple(range(n_bands)) else list(indices)


def _masked(values: NDArray[Any], valid: NDArray[np.bool_], nodata: int, dtype: type[np.generic]) -> Any:
    return np.where(valid, values, nodata).astype(dtype)


def infer_array(
    reflectance: F32,
    *,
    models: LoadedModels,
    prompts: PromptSet,
    grid: TileGrid,
    blender: Blender,
    batch_size: int = 8,
) -> BlockLayers:
    """Run the whole tiled inference on an in-memory ``(2, bands, rows, cols)`` array in one go.

    The single-process reference of the distributed engine (and a convenience for small scenes and
    notebooks): the whole array is one block.
    """
    height, width = reflectance.shape[2], reflectance.shape[3]
    if (grid.height, grid.width) != (height, width):
        raise InferenceError(
            f"the tile grid is for {grid.height} x {grid.width} pixels but the array has "
            f"{height} x {width}; build the grid for the array"
        )
    whole = Window(0, height, 0, width)
    layers, _, _ = compute_window(
        reflectance,
        whole,
        whole,
        models=models,
        prompts=prompts,
        grid=grid,
        blender=blender,
        batch_size=batch_size,
    )
    return layers
