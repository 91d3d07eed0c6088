"""Open-vocabulary segmenters: the Protocol every segmenter follows, and a registry of them.

A segmenter turns an image batch and a :class:`~seg2change_core.prompts.PromptSet` into
per-class probabilities. Two are built in:

``"spectral"``
    :class:`~seg2change_core.segmenters.spectral.SpectralSegmenter`: spectral-index evidence for
    multispectral reflectance, no weights needed.
``"clip"``
    :class:`~seg2change_core.segmenters.clip.CLIPSegmenter`: a training-free CLIP ViT dense
    segmenter (SegEarth-OV style) for RGB imagery, weights from a local file.

Other packages add their own with :func:`register_segmenter`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch

from seg2change_core.errors import SegmenterError
from seg2change_core.prompts import PromptSet

__all__ = [
    "Segmenter",
    "available_segmenters",
    "check_image",
    "get_segmenter",
    "register_segmenter",
]


@runtime_checkable
class Segmenter(Protocol):
    """What the pipeline needs from an open-vocabulary segmenter.

    Attributes
    ----------
    name
        Registry name (``"spectral"``, ``"clip"``).
    bands
        Band common names (STAC ``eo``) the image channels must hold, in this order, e.g.
        ``("blue", "green", "red", "nir", "swir16", "swir22")`` or ``("red", "green", "blue")``.
    normalisation
        What value range the image must be in, in words (e.g. ``"surface reflectance 0..1
        (Sentinel-2 L2A digital numbers times 0.0001)"``). The segmenter applies any model-specific
        normalisation (mean/std) itself.
    """

    name: str
    bands: tuple[str, ...]
    normalisation: str

    def segment(self, image: torch.Tensor, classes: PromptSet) -> torch.Tensor:
        """Per-class probabilities of an image batch.

        Parameters
        ----------
        image
            ``(B, C, H, W)`` float tensor, ``C == len(bands)``, in the range :attr:`normalisation`
            states.
        classes
            The classes to find.

        Returns
        -------
        torch.Tensor
            ``(B, K, H, W)`` float probabilities that sum to 1 over ``K = classes.num_classes``
            (background first when the prompt set has one).
        """
        ...


S = TypeVar("S", bound=Callable[..., Segmenter])

_REGISTRY: dict[str, Callable[..., Segmenter]] = {}


def register_segmenter(name: str) -> Callable[[S], S]:
    """Class or factory decorator that makes a segmenter available under ``name``.

    Parameters
    ----------
    name
        The registry name; must not be taken yet.

    Raises
    ------
    SegmenterError
        If the name is already registered.
    """

    def decorator(factory: S) -> S:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise SegmenterError(f"a segmenter named {name!r} is already registered; choose another name")
        _REGISTRY[name] = factory
        return factory

    return decorator


def get_segmenter(name: str, **kwargs: Any) -> Segmenter:
    """Build the segmenter registered under ``name`` with keyword arguments ``kwargs``.

    Raises
    ------
    SegmenterError
        If no segmenter has that name (the message lists those available).
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise SegmenterError(
            f"no segmenter named {name!r}; available: {', '.join(available_segmenters())}"
        ) from None
    return factory(**kwargs)


def available_segmenters() -> tuple[str, ...]:
    """Registered segmenter names, sorted."""
    return tuple(sorted(_REGISTRY))


def check_image(image: torch.Tensor, bands: tuple[str, ...], segmenter: str) -> None:
    """Check that ``image`` is a floating ``(B, len(bands), H, W)`` batch.

    Raises
    ------
    SegmenterError
        Naming the expected layout, or the scaling to apply to integer digital numbers.
    """
    if image.dim() != 4 or image.shape[1] != len(bands):
        raise SegmenterError(
            f"segmenter {segmenter!r} expects a (B, {len(bands)}, H, W) image with bands "
            f"{', '.join(bands)}; got shape {tuple(image.shape)}"
        )
    if not image.is_floating_point():
        raise SegmenterError(
            f"segmenter {segmenter!r} expects a floating-point image, got {image.dtype}; "
            "convert digital numbers to reflectance first (Sentinel-2 L2A: multiply by 0.0001)"
        )


# Importing the built-ins registers them; they import this module's registry, defined above.
from seg2change_core.segmenters import clip, spectral  # noqa: E402, F401
