"""Named training recipes: the settings that work, under one name each.

``seg2change train DATA... --recipe NAME`` starts from a :class:`Recipe`; every option given on
the command line replaces the recipe's value. The recipes:

``rgb``
    The main recipe: 8-bit RGB very-high-resolution pairs (LEVIR-CD, WHU-CD, DSIFN, EGY-BCD,
    SZTAKI and the like). The multi-scale CNN backbone (:mod:`seg2change_core.backbones.conv`)
    feeding the CACH head, cross-entropy with a dice term, change-specific augmentation
    (per-date photometry, zoom, date swap, unchanged pairs, pasted synthetic change), crops
    drawn around change half of the time, normalisation fitted on the training data.
``sentinel2``
    Sentinel-2 L1C/L2A pairs at 10 m, such as OSCD: the same model on the six bands the
    pipeline's Sentinel-2 jobs read (blue, green, red, nir, swir16, swir22; ``--bands`` chooses
    others), several crops per image (cities of ~500 px), stronger focus on the rare change.
``dinov2``
    The paper's setting: a frozen DINOv2 backbone loaded from the weights you give
    (``--backbone-weights``), ImageNet normalisation and the reference loss.

A recipe's ``minutes`` is its time budget: the command measures the first steps and fits the
number of epochs (and so the cosine schedule) to it, unless ``--epochs`` is given.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from seg2change_core.datasets.augmentation import ChangeAugmentation
from seg2change_core.errors import ModelError
from seg2change_core.losses import LossWeights
from seg2change_core.training import ModelConfig, TrainConfig

__all__ = ["RECIPES", "Recipe", "get_recipe", "native_bf16"]


@dataclass(frozen=True)
class Recipe:
    """Everything a training run needs besides the data.

    Attributes
    ----------
    name
        Recipe name.
    summary
        One line for ``--help`` and the checkpoint metadata.
    model
        Architecture.
    train
        Optimisation settings (``epochs`` is replaced when a time budget fits them).
    augmentation
        Change-specific augmentation, or ``None``.
    crop_size
        Training crop side.
    crops_per_image
        Crops drawn from each pair per epoch.
    focus_change
        Share of crops drawn around a changed pixel.
    normalisation
        ``"per-image"`` (each image standardised with its own band statistics: a date's
        brightness or season says nothing), ``"dataset"`` (statistics of the training pairs) or
        ``"imagenet"``.
    validation_crop
        Side of the top-left crop validated on (``None``: whole images, tiled). 252 scores a
        256 px tile all but its last 4 rows and columns at a quarter of the cost: such a tile
        would be padded to the next valid tile, 504 px.
    minutes
        Time budget the epochs are fitted to (``None``: ``train.epochs`` as given).
    bands
        Bands to train on, by name and in order, where the data name them (``None``: all).
    change_boost
        Crops drawn from a pair with change for one from a pair without (crops are also drawn
        in proportion to a pair's area; see :func:`~seg2change_core.datasets.balanced_samples`).
    bf16
        bfloat16 autocast: ``None`` uses it where the hardware computes bfloat16 natively (a
        CPU with AMX or AVX-512 BF16, a CUDA GPU that supports it), where a step is about 1.6x
        faster, so the time budget holds more of them; ``True``/``False`` force it.
    """

    name: str
    summary: str
    model: ModelConfig
    train: TrainConfig
    augmentation: ChangeAugmentation | None
    crop_size: int = 252
    crops_per_image: int = 1
    focus_change: float = 0.5
    normalisation: str = "dataset"
    validation_crop: int | None = None
    minutes: float | None = None
    bands: tuple[str, ...] | None = None
    change_boost: int = 1
    bf16: bool | None = None


_CHANGE_AUGMENTATION = ChangeAugmentation(
    zoom=1.5, photometric=0.25, noise=0.02, swap_dates=0.5, unchanged_pair=0.1, paste=0.3
)

RECIPES: dict[str, Recipe] = {
    "rgb": Recipe(
        name="rgb",
        summary="8-bit RGB very-high-resolution pairs: conv backbone + CACH head, dice, change augmentation",
        model=ModelConfig(backbone="conv", embed_dim=192, hidden_dim=32),
        train=TrainConfig(
            epochs=40,
            batch_size=4,
            lr=1e-3,
            weight_decay=0.05,
            warmup_steps=30,
            loss=LossWeights(dice=0.5, changed_class_weight=2.0),
            ema_decay=0.99,
        ),
        augmentation=replace(_CHANGE_AUGMENTATION, paste_objects=0.3),
        change_boost=3,
        validation_crop=252,
        minutes=35.0,
    ),
    "sentinel2": Recipe(
        name="sentinel2",
        summary="Sentinel-2 pairs (13 or chosen bands, 10 m): conv backbone + CACH head on small crops",
        model=ModelConfig(backbone="conv", embed_dim=192, hidden_dim=32),
        train=TrainConfig(
            epochs=40,
            batch_size=8,
            lr=1e-3,
            weight_decay=0.05,
            warmup_steps=40,
            loss=LossWeights(dice=0.5, changed_class_weight=2.0),
        ),
        augmentation=ChangeAugmentation(
            zoom=1.25, photometric=0.15, noise=0.01, swap_dates=0.5, unchanged_pair=0.1, paste=0.2
        ),
        crops_per_image=32,
        focus_change=0.7,
        minutes=20.0,
        bands=("blue", "green", "red", "nir", "swir16", "swir22"),
    ),
    "dinov2": Recipe(
        name="dinov2",
        summary="the paper's setting: frozen DINOv2 (weights from --backbone-weights), reference loss",
        model=ModelConfig(backbone="dinov2_vits14", hidden_dim=64),
        train=TrainConfig(epochs=20, batch_size=4, lr=5e-4, warmup_steps=30),
        augmentation=None,
        crop_size=504,
        focus_change=0.0,
        normalisation="imagenet",
    ),
}
"""The named recipes (see the module docstring)."""


def get_recipe(name: str) -> Recipe:
    """The recipe of that name.

    Raises
    ------
    ModelError
        For an unknown name (the message lists the known ones).
    """
    try:
        return RECIPES[name]
    except KeyError:
        raise ModelError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}") from None


def native_bf16(device: str) -> bool:
    """Whether ``device`` computes bfloat16 natively (CPU: AMX or AVX-512 BF16 in /proc/cpuinfo).

    Elsewhere (other CPUs, other systems) bfloat16 is emulated and slower, so the answer is no.
    """
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        with open("/proc/cpuinfo") as info:
            flags = info.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags
