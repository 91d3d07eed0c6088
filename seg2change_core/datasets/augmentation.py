"""Augmentation of change pairs: geometry shared by both dates, and what change itself asks for.

Geometry
--------
:func:`augment_arrays` applies one random crop (optionally zoomed), horizontal/vertical flip and
90-degree rotation to date A, date B and every label alike.

Change-specific (:class:`ChangeAugmentation`, :func:`augment_change`)
---------------------------------------------------------------------
A change model must answer "did the ground change?", not "did the light, the season or the
sensor?". Each date therefore gets its *own* photometric draw (:func:`photometric_jitter`:
per-band gain, brightness, contrast, gamma, noise), the dates are swapped at random (change is
symmetric), some pairs are replaced by one date against a photometrically altered copy of itself
(a pair in which nothing changed, however different it looks), and synthetic change is made by
pasting patches of another pair into one date (the pasted area is labelled changed); a date can
also take the band histograms of another source image's date
(:mod:`~seg2change_core.datasets.colour_transfer`), another source's light on the same ground. Together
they let a model trained on a few hundred tiles carry to other scenes and sensors.

Draws come from a generator seeded by ``(seed, epoch, index)`` (see
:class:`~seg2change_core.datasets.ChangeDetectionDataset`), so a sample depends only on those three
numbers: runs are reproducible and a resumed training sees exactly the samples an uninterrupted
one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional as F

from seg2change_core.datasets.colour_transfer import match_histograms
from seg2change_core.datasets.images import Array
from seg2change_core.datasets.labels import IGNORE_INDEX
from seg2change_core.errors import DatasetError

__all__ = [
    "ChangeAugmentation",
    "augment_arrays",
    "augment_change",
    "paste_objects",
    "paste_patches",
    "photometric_jitter",
]

Float32 = NDArray[np.float32]


def augment_arrays(
    arrays: Sequence[Array],
    rng: np.random.Generator,
    *,
    crop_size: int | None = None,
    flip: bool = True,
    rotate: bool = True,
    pad_values: Sequence[float] | None = None,
    contain: tuple[int, int] | None = None,
    zoom: float = 1.0,
    smooth: Sequence[bool] | None = None,
) -> list[Array]:
    """Apply one random crop, flip and 90-degree rotation identically to several arrays.

    Parameters
    ----------
    arrays
        ``(C, H, W)`` or ``(H, W)`` arrays sharing ``H`` and ``W``.
    rng
        Source of the random draws (crop corner, then flips, then rotation).
    crop_size
        Side of the square crop; arrays smaller than it are first padded at the bottom and right
        with ``pad_values``. ``None`` keeps the full size.
    flip, rotate
        Draw horizontal/vertical flips and a rotation by ``k * 90`` degrees. Rotations by 90 and
        270 degrees are only drawn for square outputs.
    pad_values
        Value padded into each array (default 0).
    contain
        ``(row, column)`` of a pixel the crop must contain (the crop corner is drawn among the
        positions that contain it); ``None`` draws it anywhere.
    zoom
        Magnification of the crop: a window of side ``round(crop_size / zoom)`` (at most the
        image's shorter side, or ``crop_size``) is cut and resampled to ``crop_size`` (needs
        ``crop_size``).
    smooth
        Per array, whether it is resampled bilinearly (images; returned as float32) or by
        nearest neighbour (labels, class maps; dtype kept). Default: only the first two.

    Returns
    -------
    list of numpy.ndarray
        Contiguous copies, in the order given.
    """
    height, width = arrays[0].shape[-2:]
    if any(a.shape[-2:] != (height, width) for a in arrays):
        raise DatasetError(f"arrays to augment differ in size: {[a.shape for a in arrays]}")
    out = list(arrays)
    if crop_size is not None:
        out = _crop(out, rng, crop_size, pad_values, contain, zoom, smooth)
        height = width = crop_size
    if flip:
        if rng.random() < 0.5:
            out = [a[..., :, ::-1] for a in out]
        if rng.random() < 0.5:
            out = [a[..., ::-1, :] for a in out]
    if rotate:
        k = int(rng.integers(0, 4)) if height == width else 2 * int(rng.integers(0, 2))
        if k:
            out = [np.rot90(a, k, axes=(a.ndim - 2, a.ndim - 1)) for a in out]
    return [np.ascontiguousarray(a) for a in out]


def _crop(
    arrays: list[Array],
    rng: np.random.Generator,
    crop_size: int,
    pad_values: Sequence[float] | None,
    contain: tuple[int, int] | None,
    zoom: float,
    smooth: Sequence[bool] | None,
) -> list[Array]:
    """The random (zoomed) crop of :func:`augment_arrays`: pad, draw the corner, cut, resample."""
    out = arrays
    height, width = out[0].shape[-2:]
    final_size = crop_size
    # A zoomed-out window never reaches past the image (it would only add padding).
    crop_size = max(1, min(round(crop_size / zoom), max(min(height, width), final_size)))
    if height < crop_size or width < crop_size:
        fills = pad_values or [0.0] * len(out)
        pad_h, pad_w = max(0, crop_size - height), max(0, crop_size - width)
        out = [
            np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, pad_h), (0, pad_w)], constant_values=fill)
            for a, fill in zip(out, fills, strict=True)
        ]
        height, width = height + pad_h, width + pad_w
    top_range, left_range = (0, height - crop_size), (0, width - crop_size)
    if contain is not None:
        row, col = contain
        top_range = (max(0, row - crop_size + 1), min(row, height - crop_size))
        left_range = (max(0, col - crop_size + 1), min(col, width - crop_size))
    top = int(rng.integers(top_range[0], top_range[1] + 1))
    left = int(rng.integers(left_range[0], left_range[1] + 1))
    out = [a[..., top : top + crop_size, left : left + crop_size] for a in out]
    if final_size != crop_size:
        smooth = smooth or [i < 2 for i in range(len(out))]
        out = [_resample(a, final_size, s) for a, s in zip(out, smooth, strict=True)]
    return out


def _resample(array: Array, size: int, smooth: bool) -> Array:
    """Resample a ``(C, H, W)`` or ``(H, W)`` array to ``size x size``."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    planes = tensor.reshape(1, -1, *tensor.shape[-2:])
    if smooth:
        resized = F.interpolate(planes.float(), size=(size, size), mode="bilinear", align_corners=False)
    else:
        resized = F.interpolate(planes.float(), size=(size, size), mode="nearest").to(tensor.dtype)
    return resized.reshape(*tensor.shape[:-2], size, size).numpy()


@dataclass(frozen=True)
class ChangeAugmentation:
    """Change-specific augmentation settings (0 switches a part off).

    Attributes
    ----------
    zoom
        Crops are magnified by a factor drawn log-uniformly in ``[1 / zoom, zoom]`` (1: none).
    photometric
        Strength ``s`` of the per-date photometric draw: per-band gain and contrast in
        ``1 +- s``, brightness ``+- s / 2`` of the value range, gamma ``exp(+- s)``.
    photometric_probability
        Share of dates that get a photometric draw.
    noise
        Standard deviation of added Gaussian noise, as a share of the value range (drawn
        uniformly up to it, per date).
    swap_dates
        Probability of swapping the two dates (and class maps).
    unchanged_pair
        Probability of replacing the pair by date A against a photometric copy of itself,
        with every scored pixel unchanged.
    paste
        Probability of pasting synthetic change into one date.
    paste_patches
        Most patches pasted (1 to this many).
    paste_size
        Side range of a pasted patch, as shares of the crop side.
    paste_objects
        Probability of pasting the changed objects of another pair (the pixels its label marks
        changed, taken from its later date, so with their own shapes) into the later date.
    colour_transfer
        Probability, per date, of giving the date the band histograms of a date of another
        source image (:func:`~seg2change_core.datasets.colour_transfer.match_histograms`), so
        that one source's light, season and sensor are not learnt as what change looks like.
    """

    zoom: float = 1.0
    photometric: float = 0.0
    photometric_probability: float = 0.8
    noise: float = 0.0
    swap_dates: float = 0.0
    unchanged_pair: float = 0.0
    paste: float = 0.0
    paste_patches: int = 3
    paste_size: tuple[float, float] = (0.06, 0.25)
    paste_objects: float = 0.0
    colour_transfer: float = 0.0

    def __post_init__(self) -> None:
        shares = (
            self.photometric_probability,
            self.swap_dates,
            self.unchanged_pair,
            self.paste,
            self.paste_objects,
            self.colour_transfer,
        )
        if self.zoom < 1.0 or self.photometric < 0 or self.noise < 0 or not all(0 <= p <= 1 for p in shares):
            raise DatasetError(
                f"invalid augmentation {self}: zoom must be >= 1, strengths >= 0, probabilities in [0, 1]"
            )
        low, high = self.paste_size
        if not 0 < low <= high <= 1 or self.paste_patches < 1:
            raise DatasetError(f"paste_size must satisfy 0 < low <= high <= 1 and paste_patches >= 1: {self}")

    def draw_zoom(self, rng: np.random.Generator) -> float:
        """A zoom factor for one sample (1 without zoom; no draw is made then)."""
        if self.zoom == 1.0:
            return 1.0
        return float(np.exp(rng.uniform(-np.log(self.zoom), np.log(self.zoom))))


def photometric_jitter(
    image: Array, rng: np.random.Generator, strength: float, value_range: float, noise: float = 0.0
) -> Float32:
    """One date's photometric draw: gamma, contrast, per-band gain, brightness, noise.

    Parameters
    ----------
    image
        ``(bands, H, W)`` raw values.
    rng
        Source of the draws.
    strength
        See :attr:`ChangeAugmentation.photometric`.
    value_range
        Raw value of full scale (255 for 8-bit, 10000 for 16-bit reflectance DN, 1 for
        reflectance); the jitter works on ``image / value_range``.
    noise
        Largest noise standard deviation, as a share of the value range.

    Returns
    -------
    numpy.ndarray
        float32 raw values, never below 0.
    """
    x = np.asarray(image, dtype=np.float32) / np.float32(value_range)
    bands = x.shape[0]
    gamma = float(np.exp(rng.uniform(-strength, strength)))
    x = np.power(np.clip(x, 0.0, None), gamma, dtype=np.float32)
    mean = x.reshape(bands, -1).mean(axis=1).reshape(bands, 1, 1)
    contrast = np.float32(rng.uniform(1 - strength, 1 + strength))
    gain = rng.uniform(1 - strength, 1 + strength, size=(bands, 1, 1)).astype(np.float32)
    shift = np.float32(rng.uniform(-strength / 2, strength / 2) * float(mean.mean()))
    x = ((x - mean) * contrast + mean) * gain + shift
    if noise > 0:
        x = x + rng.normal(0.0, rng.uniform(0.0, noise), size=x.shape).astype(np.float32)
    scaled: Float32 = np.clip(x, 0.0, None) * np.float32(value_range)
    return scaled


def paste_patches(
    image: Float32,
    target: NDArray[np.uint8],
    donor: Float32,
    rng: np.random.Generator,
    *,
    count: int,
    size: tuple[float, float],
) -> tuple[Float32, NDArray[np.uint8]]:
    """Paste rectangles of ``donor`` into ``image`` and mark them changed in ``target``.

    Parameters
    ----------
    image
        ``(bands, H, W)`` date to alter.
    target
        ``(H, W)`` change target; pasted pixels become 1, ignored ones stay ignored.
    donor
        ``(bands, h, w)`` image the patches come from (another pair's date), as large as a patch
        at least.
    rng
        Source of the draws.
    count
        Patches to paste (1 to ``count``).
    size
        Side range of a patch as shares of the image side.

    Returns
    -------
    image, target
        New arrays; the inputs are not modified.
    """
    image, target = image.copy(), target.copy()
    height, width = target.shape
    for _ in range(int(rng.integers(1, count + 1))):
        side_h = int(rng.uniform(*size) * height)
        side_w = int(rng.uniform(*size) * width)
        side_h = max(2, min(side_h, donor.shape[1], height))
        side_w = max(2, min(side_w, donor.shape[2], width))
        top, left = int(rng.integers(0, height - side_h + 1)), int(rng.integers(0, width - side_w + 1))
        d_top = int(rng.integers(0, donor.shape[1] - side_h + 1))
        d_left = int(rng.integers(0, donor.shape[2] - side_w + 1))
        image[:, top : top + side_h, left : left + side_w] = donor[
            :, d_top : d_top + side_h, d_left : d_left + side_w
        ]
        window = target[top : top + side_h, left : left + side_w]
        window[window != IGNORE_INDEX] = 1
    return image, target


def paste_objects(
    image: Float32,
    target: NDArray[np.uint8],
    donor: Float32,
    donor_changed: NDArray[np.bool_],
) -> tuple[Float32, NDArray[np.uint8]]:
    """Paste the changed objects of another pair into ``image`` and mark them changed.

    Unlike :func:`paste_patches`, the pasted pixels keep the shapes of real change (buildings,
    clearings), so the model sees such objects in new surroundings instead of learning where
    they stood in the few training scenes.

    Parameters
    ----------
    image
        ``(bands, H, W)`` date to alter.
    target
        ``(H, W)`` change target; pasted pixels become 1, ignored ones stay ignored.
    donor
        ``(bands, H, W)`` the other pair's later date, cropped to the same size.
    donor_changed
        ``(H, W)`` where the other pair changed.

    Returns
    -------
    image, target
        New arrays; the inputs are not modified.
    """
    if donor.shape != image.shape or donor_changed.shape != target.shape:
        raise DatasetError(
            f"donor of shape {donor.shape} / {donor_changed.shape} does not match the image "
            f"{image.shape} / {target.shape}; crop both to one size"
        )
    image, target = image.copy(), target.copy()
    image[:, donor_changed] = donor[:, donor_changed]
    target[donor_changed & (target != IGNORE_INDEX)] = 1
    return image, target


def augment_change(
    before: Array,
    after: Array,
    target: NDArray[np.uint8],
    rng: np.random.Generator,
    settings: ChangeAugmentation,
    *,
    value_range: float,
    donor: Array | None = None,
    objects: tuple[Array, NDArray[np.bool_]] | None = None,
    styles: tuple[Array | None, Array | None] = (None, None),
) -> tuple[Float32, Float32, NDArray[np.uint8], bool]:
    """The change-specific part of augmentation, after the shared geometry.

    Parameters
    ----------
    before, after
        ``(bands, H, W)`` raw dates.
    target
        ``(H, W)`` change target (0, 1, 255).
    rng
        Source of the draws (a fixed sequence of them, so samples stay reproducible).
    settings
        What to apply.
    value_range
        Raw full-scale value (see :func:`photometric_jitter`).
    donor
        An image of another pair for synthetic change (``None``: no pasting).
    objects
        Another pair's later date and changed mask, cropped like the dates, for
        :func:`paste_objects` (``None``: no object pasting).
    styles
        Per date (after any swap), a date of another source whose band histograms it takes
        before the photometric draw (``None``: it keeps its own); the target is unchanged.

    Returns
    -------
    before, after, target, swapped
        float32 dates, the new target, and whether the dates were swapped (class maps must
        follow).
    """
    a = np.asarray(before, dtype=np.float32)
    b = np.asarray(after, dtype=np.float32)
    out_target = target
    swapped = bool(rng.random() < settings.swap_dates)
    if swapped:
        a, b = b, a
    if rng.random() < settings.unchanged_pair:
        b = a.copy()
        out_target = np.where(target == IGNORE_INDEX, target, 0).astype(np.uint8)
    if donor is not None and rng.random() < settings.paste:
        into_after = bool(rng.random() < 0.5)
        altered, out_target = paste_patches(
            b if into_after else a,
            out_target,
            np.asarray(donor, dtype=np.float32),
            rng,
            count=settings.paste_patches,
            size=settings.paste_size,
        )
        a, b = (a, altered) if into_after else (altered, b)
    if objects is not None and rng.random() < settings.paste_objects:
        b, out_target = paste_objects(b, out_target, np.asarray(objects[0], dtype=np.float32), objects[1])
    a = a if styles[0] is None else match_histograms(a, styles[0])
    b = b if styles[1] is None else match_histograms(b, styles[1])
    if settings.photometric > 0:
        draws = [rng.random() < settings.photometric_probability for _ in range(2)]
        a = photometric_jitter(a, rng, settings.photometric, value_range, settings.noise) if draws[0] else a
        b = photometric_jitter(b, rng, settings.photometric, value_range, settings.noise) if draws[1] else b
    return a, b, out_target, swapped
