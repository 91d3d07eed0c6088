"""The change-model extension point and the CACH change model.

A change model maps a pair of co-registered image batches to the probability that each pixel
changed. :class:`ChangeModel` is the Protocol the tiled engine calls; :class:`CACHChangeModel` is
Seg2Change's learned, threshold-free model (backbone + CACH head); the classical baseline lives in
:mod:`seg2change_core.baselines`. :func:`decide` turns a probability into the binary decision.

Input normalisation
-------------------
Every model carries one :class:`InputNormalisation`, stored in its checkpoint and used for training
and inference alike (the reference normalises with ImageNet statistics during training but not at
test time; this package does not repeat that): ``x_norm = (x * scale - mean[band]) / std[band]``,
i.e. raw values are first brought to reflectance (or to [0, 1] for 8-bit imagery) by ``scale`` and
then standardised per band. Non-finite values (nodata) become 0 after normalisation, i.e. the band
mean; the engine masks nodata pixels in the outputs.

With ``per_image=True`` each image (each date of each tile) is first standardised per band with
its own mean and standard deviation over its finite pixels, then by the stored statistics. A
change model then cannot learn "this date is darker, so this is a scene where nothing changes":
on LEVIR-CD, the training scenes whose second date is a darker season hold almost no change,
and a model that saw the brightness learned to call every darker-season scene unchanged. The
statistics are those of the model's own input (a tile of the engine's global grid), so outputs
still do not depend on how a cube is cut into blocks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn import functional as F

from seg2change_core.backbones.base import Backbone
from seg2change_core.cach.geometry import PATCH_SIZE, padded_tile
from seg2change_core.cach.head import CACHHead, CACHOutput
from seg2change_core.errors import ModelError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CACHChangeModel",
    "ChangeModel",
    "InputNormalisation",
    "decide",
    "pad_to_tile",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputNormalisation:
    """Per-band normalisation ``(x * scale - mean) / std``.

    Attributes
    ----------
    bands
        Band names in channel order (e.g. ``("red", "green", "blue")``).
    mean, std
        Per-band statistics of the scaled values.
    scale
        Factor from raw values to reflectance or [0, 1] (``1 / 255`` for 8-bit RGB, ``1e-4`` for
        Sentinel-2 L2A digital numbers).
    per_image
        Standardise each image per band with its own statistics first (see the module docstring).
    """

    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 1.0
    per_image: bool = False

    def __post_init__(self) -> None:
        if not self.bands or len(self.mean) != len(self.bands) or len(self.std) != len(self.bands):
            raise ModelError(
                f"normalisation needs one mean and one std per band: {len(self.bands)} bands, "
                f"{len(self.mean)} means, {len(self.std)} stds"
            )
        if any(s <= 0 for s in self.std) or self.scale <= 0:
            raise ModelError(
                f"normalisation std and scale must be positive, got std={self.std}, scale={self.scale}"
            )

    @classmethod
    def imagenet_rgb(cls, scale: float = 1 / 255) -> InputNormalisation:
        """ImageNet statistics for red, green, blue scaled to [0, 1] (what DINOv2 was trained on)."""
        return cls(("red", "green", "blue"), IMAGENET_MEAN, IMAGENET_STD, scale)

    @property
    def num_bands(self) -> int:
        """Number of bands."""
        return len(self.bands)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a ``(B, bands, H, W)`` batch; non-finite values become 0 (the band mean).

        Raises
        ------
        ModelError
            When the channel count differs from the number of bands.
        """
        if x.dim() != 4 or x.shape[1] != self.num_bands:
            raise ModelError(
                f"expected a (B, {self.num_bands}, H, W) batch with bands {list(self.bands)}, got shape "
                f"{tuple(x.shape)}; select those bands in that order"
            )
        x = x.to(torch.float32)
        if self.per_image:
            x = _standardise_each(x * self.scale) / self.scale
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        out = (x * self.scale - mean) / std
        return torch.where(torch.isfinite(out), out, torch.zeros((), dtype=out.dtype, device=out.device))

    def to_json(self) -> str:
        """JSON text of the normalisation (stored in checkpoints)."""
        data: dict[str, Any] = {
            "bands": list(self.bands),
            "mean": list(self.mean),
            "std": list(self.std),
            "scale": self.scale,
        }
        if self.per_image:
            data["per_image"] = True
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> InputNormalisation:
        """Inverse of :meth:`to_json`."""
        data: dict[str, Any] = json.loads(text)
        return cls(
            tuple(str(b) for b in data["bands"]),
            tuple(float(m) for m in data["mean"]),
            tuple(float(s) for s in data["std"]),
            float(data["scale"]),
            bool(data.get("per_image", False)),
        )


def _standardise_each(x: torch.Tensor) -> torch.Tensor:
    """Each ``(bands, H, W)`` image of a batch per band to mean 0 and std 1 over its finite pixels."""
    finite = torch.isfinite(x)
    count = finite.sum(dim=(2, 3), keepdim=True).clamp_min(1)
    values = torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device))
    mean = values.sum(dim=(2, 3), keepdim=True) / count
    spread = torch.where(finite, (x - mean) ** 2, torch.zeros((), dtype=x.dtype, device=x.device))
    std = (spread.sum(dim=(2, 3), keepdim=True) / count).sqrt().clamp_min(1e-6)
    return (x - mean) / std


@runtime_checkable
class ChangeModel(Protocol):
    """What the tiled engine needs from a change model.

    Attributes
    ----------
    name
        Human-readable model name (recorded in outputs' provenance).
    bands
        Band names expected, in channel order.
    in_channels
        ``len(bands)``.
    normalisation
        The model's one input normalisation (applied inside :meth:`predict`; pass raw values).
    tile_size
        Recommended tile side in pixels, or ``None`` when any size works equally well.
    """

    name: str
    normalisation: InputNormalisation
    tile_size: int | None

    @property
    def bands(self) -> tuple[str, ...]:
        """Band names expected, in channel order."""
        ...

    @property
    def in_channels(self) -> int:
        """Number of input bands."""
        ...

    def predict(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Probability of change ``(B, 1, H, W)`` in [0, 1] for raw ``(B, C, H, W)`` float batches."""
        ...


def decide(probability: torch.Tensor) -> torch.Tensor:
    """Binary change decision: ``probability > 0.5``.

    For :class:`CACHChangeModel` this is the argmax of the two logits (ties go to "unchanged", as
    ``argmax`` does; the two agree except where the logits differ by less than float32 resolution
    and the probability rounds to 0.5). For the baseline it is its Otsu threshold. No hand-set
    threshold is involved.
    """
    return probability > 0.5


def pad_to_tile(x: torch.Tensor) -> torch.Tensor:
    """Pad a ``(B, C, H, W)`` batch at the bottom and right to the next valid tile size.

    Valid sides are multiples of 252 px (see :mod:`seg2change_core.cach.geometry`). Reflection
    padding is used when each padding is smaller than the side it extends, edge replication
    otherwise.
    """
    height, width = x.shape[2], x.shape[3]
    pad_h, pad_w = padded_tile(height) - height, padded_tile(width) - width
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


class CACHChangeModel(nn.Module):
    """Seg2Change's category-agnostic change model: a backbone and the CACH head.

    Parameters
    ----------
    backbone
        A :class:`seg2change_core.backbones.Backbone` (DINOv2 or the compact trainable one).
    head
        A :class:`CACHHead` whose ``in_channels`` equals the backbone width.
    normalisation
        The input normalisation, with one band per backbone input channel.
    layers
        Four backbone block indices fed to the head; default the backbone's ``default_layers``.
    name
        Model name; default ``"cach-<backbone name>"``.
    tile_size
        Recommended tile side (504: a valid size, and the one the reference was trained at).

    Notes
    -----
    Images of any size are accepted: they are padded at the bottom and right to the next multiple
    of 252 px (:func:`pad_to_tile`), so the backbone sees image content everywhere and the head
    needs no token padding, and the outputs are cropped back. Tiles whose sides are multiples of
    252 (504, 756, 1008) avoid that padding work.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: CACHHead,
        normalisation: InputNormalisation,
        layers: Sequence[int] | None = None,
        name: str | None = None,
        tile_size: int | None = 504,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, Backbone):
            raise ModelError(f"{type(backbone).__name__} does not implement the Backbone protocol")
        if head.config.in_channels != backbone.embed_dim:
            raise ModelError(
                f"head expects {head.config.in_channels}-wide tokens but backbone {backbone.name} gives "
                f"{backbone.embed_dim}; build CACHHead(in_channels={backbone.embed_dim})"
            )
        if normalisation.num_bands != backbone.in_chans:
            raise ModelError(
                f"normalisation has {normalisation.num_bands} bands but backbone {backbone.name} takes "
                f"{backbone.in_chans} channels"
            )
        chosen = tuple(backbone.default_layers if layers is None else layers)
        if len(chosen) != 4:
            raise ModelError(f"the CACH head takes exactly 4 backbone layers, got {list(chosen)}")
        self.backbone = backbone
        self.head = head
        self.normalisation = normalisation
        self.layers = chosen
        self.name = name or f"cach-{backbone.name}"
        self.tile_size = tile_size

    @property
    def bands(self) -> tuple[str, ...]:
        """Band names expected, in channel order."""
        return self.normalisation.bands

    @property
    def in_channels(self) -> int:
        """Number of input bands."""
        return self.normalisation.num_bands

    def _tokens(
        self, before: torch.Tensor, after: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], tuple[int, int]]:
        if before.shape != after.shape:
            raise ModelError(
                "before and after must have the same shape, got "
                f"{tuple(before.shape)} and {tuple(after.shape)}"
            )
        pair = torch.cat([self.normalisation.apply(before), self.normalisation.apply(after)], dim=0)
        pair = pad_to_tile(pair)
        grid = (pair.shape[2] // PATCH_SIZE, pair.shape[3] // PATCH_SIZE)
        backbone: Backbone = self.backbone
        feats = backbone.get_intermediate_layers(pair, self.layers)
        batch = before.shape[0]
        return [f[:batch] for f in feats], [f[batch:] for f in feats], grid

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> CACHOutput:
        """All six logit maps, each ``(B, 2, H, W)`` (for training with deep supervision).

        Parameters
        ----------
        before, after
            Raw ``(B, bands, H, W)`` batches (normalised here).
        """
        height, width = before.shape[2], before.shape[3]
        feats_a, feats_b, grid = self._tokens(before, after)
        outputs = self.head(feats_a, feats_b, grid=grid)
        return CACHOutput(*(out[:, :, :height, :width] for out in outputs))

    def change_logits(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Main change logits ``(B, 2, H, W)``; channel 1 is "changed"."""
        height, width = before.shape[2], before.shape[3]
        feats_a, feats_b, grid = self._tokens(before, after)
        logits = self.head.change_logits(feats_a, feats_b, grid=grid)
        return logits[:, :, :height, :width]

    def predict(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Probability of change ``softmax(change logits)[:, 1]`` as ``(B, 1, H, W)``.

        Parameters
        ----------
        before, after
            Raw ``(B, bands, H, W)`` float batches of the two dates, same shape (moved to the
            model's device for the computation; the result is on theirs).
        """
        device = next(self.parameters()).device
        with torch.no_grad():
            logits = self.change_logits(before.to(device), after.to(device))
        return torch.softmax(logits, dim=1)[:, 1:2].to(before.device)
