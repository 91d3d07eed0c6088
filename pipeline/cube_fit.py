"""Fitting a change model once per job, on a deterministic sample of the input cube's pixels.

A baseline such as CVA needs statistics of the whole scene, not of one block: the sample is drawn
from a fixed grid of windows over the cube, so it does not depend on the block size.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

from pipeline.change_cube import BlockGrid
from pipeline.cube_read import InputCube
from pipeline.errors import InferenceError
from pipeline.input_reader import read_window
from pipeline.models import ModelRuntime, change_model_info, fit_change_model

__all__ = ["FIT_WINDOW", "fit_for_cube", "sample_pixels"]

#: Side of the windows sampled to fit a baseline once per job (independent of the block size).
FIT_WINDOW = 512


def sample_pixels(
    cube: InputCube, *, windows: int, max_pixels: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic sample of valid pixels of the cube, to fit a model once per job.

    ``windows`` windows of :data:`FIT_WINDOW` pixels, spread evenly over a fixed grid of the cube
    (so the sample does not depend on the block size), are read; their valid pixels (every band
    finite on both dates) are subsampled (seeded) to ``max_pixels`` in total.

    Returns
    -------
    tuple of torch.Tensor
        ``before, after`` as ``(1, bands, 1, N)`` float32.

    Raises
    ------
    InferenceError
        When the sampled windows hold no valid pixel.
    """
    grid = BlockGrid(cube.height, cube.width, FIT_WINDOW)
    cells = list(grid)
    picks = sorted({int(round(i)) for i in np.linspace(0, len(cells) - 1, min(windows, len(cells)))})
    per_window = max(1, max_pixels // len(picks))
    rng = np.random.default_rng(seed)
    parts: list[NDArray[np.float32]] = []
    for index in picks:
        data = read_window(str(cube.path), grid.window(*cells[index]))
        flat = data.reshape(2, data.shape[1], -1)
        valid = np.isfinite(flat).all(axis=(0, 1))
        pixels = flat[:, :, valid]
        if pixels.shape[2] > per_window:
            keep = np.sort(rng.choice(pixels.shape[2], per_window, replace=False))
            pixels = pixels[:, :, keep]
        parts.append(pixels)
    sample = np.concatenate(parts, axis=2)
    if sample.shape[2] < 2:
        raise InferenceError(
            f"the input cube {cube.path} has no valid pixels where it was sampled (every band finite "
            "on both dates); check the cube's clear fraction, loosen the cloud limit or widen the windows"
        )
    tensor = torch.from_numpy(sample)
    return tensor[0][None, :, None, :], tensor[1][None, :, None, :]


def fit_for_cube(runtime: ModelRuntime, cube: InputCube) -> ModelRuntime:
    """``runtime`` with its change model fitted on a sample of ``cube`` (:func:`sample_pixels`) when
    it needs a fit once per job (the CVA baseline); otherwise ``runtime`` unchanged."""
    spec = runtime.spec
    if not change_model_info(spec, runtime.cube_bands).needs_fit:
        return runtime
    before, after = sample_pixels(cube, windows=spec.fit_blocks, max_pixels=spec.fit_pixels, seed=spec.seed)
    return fit_change_model(runtime, before, after)
