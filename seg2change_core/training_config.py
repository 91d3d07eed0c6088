"""What to train: the change model's architecture (:class:`ModelConfig`) and the optimisation
settings (:class:`TrainConfig`), as frozen specs.

Both are recorded in the checkpoint metadata and in the training state (a resume is refused when
they differ); :func:`seg2change_core.training.train` takes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from seg2change_core.errors import ModelError
from seg2change_core.losses import LossWeights

__all__ = ["TRAINABLE_BACKBONES", "LossWeights", "ModelConfig", "TrainConfig"]

TRAINABLE_BACKBONES = ("conv", "compact")
"""Backbones trained from scratch with the head (the others are frozen DINOv2 models)."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the CACH change model to train.

    Attributes
    ----------
    backbone
        ``"conv"`` (multi-scale CNN, trained from scratch: the one that learns from a few hundred
        tiles), ``"compact"`` (a small ViT trained from scratch) or a DINOv2 variant
        (``"dinov2_vits14"``, ...), which is loaded from ``backbone_weights`` and kept frozen.
    backbone_weights
        Path of the official DINOv2 weights (required for DINOv2, unused otherwise).
    embed_dim, depth, num_heads, mlp_ratio
        :class:`~seg2change_core.backbones.CompactConfig` of the compact backbone
        (``embed_dim`` is also the token width of the conv backbone).
    widths, blocks
        Stage widths and residual blocks of the conv backbone
        (:class:`~seg2change_core.backbones.ConvConfig`).
    hidden_dim
        Decoder width of the CACH head.
    tile_size
        Recommended inference tile recorded in the checkpoint.
    """

    backbone: str = "compact"
    backbone_weights: str | None = None
    embed_dim: int = 96
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 2.0
    widths: tuple[int, int, int, int] = (32, 64, 128, 192)
    blocks: tuple[int, int, int, int] = (1, 2, 2, 2)
    hidden_dim: int = 64
    tile_size: int | None = 504

    @property
    def frozen_backbone(self) -> bool:
        """Whether the backbone is frozen (DINOv2)."""
        return self.backbone not in TRAINABLE_BACKBONES


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    Attributes
    ----------
    epochs
        Epochs in all (the cosine schedule spans them).
    batch_size
        Crops per optimiser step.
    lr
        Peak learning rate of AdamW.
    weight_decay
        AdamW weight decay.
    warmup_steps
        Linear warm-up steps from ``lr / 100`` to ``lr``.
    min_lr_ratio
        Final learning rate over ``lr`` at the end of the cosine decay.
    grad_clip
        Maximum gradient norm, or ``None``.
    seed
        Seed of everything random.
    loss
        Loss weights.
    bf16_autocast
        Run the forward pass under ``torch.autocast`` with bfloat16 (faster on CPUs with
        AMX/AVX-512 BF16 and on GPUs; the loss and the weights stay float32).
    device
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    ema_decay
        Keep an exponential moving average of the weights with this decay per optimiser step
        (e.g. 0.99) and validate and save it instead of the raw weights; ``None``: no average.
        The average smooths the step-to-step swings of small-data training, which otherwise make
        single epochs collapse to "no change".
    model_name
        Name stored in the checkpoint; default ``cach-<backbone>``.
    """

    epochs: int = 20
    batch_size: int = 4
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01
    grad_clip: float | None = 1.0
    seed: int = 0
    loss: LossWeights = field(default_factory=LossWeights)
    bf16_autocast: bool = False
    model_name: str | None = None
    device: str = "cpu"
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.warmup_steps < 0:
            raise ModelError(
                f"invalid training settings: epochs={self.epochs}, batch_size={self.batch_size}, "
                f"lr={self.lr}, warmup_steps={self.warmup_steps}; give positive values"
            )
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ModelError(f"ema_decay must lie between 0 and 1 (e.g. 0.99), not {self.ema_decay}")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ModelError(f"unknown device {self.device!r}; choose cpu, cuda or cuda:N")
