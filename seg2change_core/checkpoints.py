"""Checkpoint IO: the project's safetensors checkpoints and the official torch state_dicts.

Project checkpoints
-------------------
:func:`save_change_model` writes a safetensors file whose tensors are the model's ``state_dict()``
(``backbone.*`` and ``head.*`` for CACH; none for the CVA baseline) and whose metadata (all strings)
records:

===================  =====================================================================
key                  value
===================  =====================================================================
``format``           ``seg2change-checkpoint``
``format_version``   ``1``
``architecture``     the change-model kind: ``cach``, ``cva-baseline`` or a registered one
``name``             model name
``backbone``         backbone name (``dinov2_vits14``, ``compact``, ...)
``backbone_family``  ``dinov2``, ``compact`` or ``conv``
``backbone_config``  JSON of the backbone's constructor arguments
``backbone_weights`` ``included`` or ``external`` (then pass ``backbone_weights=`` to load)
``layers``           JSON list of the four backbone blocks fed to the head
``head_config``      JSON of :class:`~seg2change_core.cach.CACHConfig`
``baseline_fit``     JSON ``{"threshold", "scale"}`` of a fitted CVA baseline, or ``null``
``normalisation``    JSON of :class:`~seg2change_core.change_model.InputNormalisation`
``tile_size``        recommended tile side in pixels, or ``null``
``training_data``    JSON summary of the training data (free form)
``software_version`` ``seg2change_core.__version__`` that wrote it
===================  =====================================================================

:func:`load_change_model` asks the kind named by ``architecture``
(:mod:`seg2change_core.change_kinds`) to rebuild the model from that metadata, checks it (architecture,
backbone, head width, every tensor's name and shape) and raises :class:`CheckpointError` naming the
first mismatch.

Official checkpoints
--------------------
:func:`load_dinov2` and :func:`load_official_head` read the reference's plain torch state_dicts
(``torch.load(..., weights_only=True)``) and load them strictly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import seg2change_core
from seg2change_core.backbones import DINOV2_CONFIGS, DinoVisionTransformer, build_dinov2
from seg2change_core.baselines import CVAFit
from seg2change_core.cach import CACHConfig, CACHHead
from seg2change_core.change_kinds import available_change_models, get_change_model_kind, kind_of
from seg2change_core.change_model import ChangeModel, InputNormalisation
from seg2change_core.errors import CheckpointError, ModelError
from seg2change_core.state_dicts import PathLike, check_state_dict, read_state_dict

__all__ = [
    "ARCHITECTURES",
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointInfo",
    "check_state_dict",
    "load_change_model",
    "load_dinov2",
    "load_official_head",
    "read_checkpoint_info",
    "read_state_dict",
    "save_change_model",
]

FORMAT = "seg2change-checkpoint"
FORMAT_VERSION = "1"
#: The built-in architectures; every registered change-model kind is one
#: (:func:`seg2change_core.change_kinds.available_change_models`).
ARCHITECTURES = ("cach", "cva-baseline")


@dataclass(frozen=True)
class CheckpointInfo:
    """What a project checkpoint's metadata says (see the module docstring for the keys)."""

    architecture: str
    name: str
    normalisation: InputNormalisation
    software_version: str
    backbone: str | None = None
    backbone_family: str | None = None
    backbone_config: Mapping[str, Any] | None = None
    backbone_weights: str | None = None
    layers: tuple[int, ...] | None = None
    head_config: CACHConfig | None = None
    baseline_fit: CVAFit | None = None
    tile_size: int | None = None
    training_data: Any = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    """Every metadata entry as stored (strings), for kinds that keep keys of their own."""


def load_dinov2(path: PathLike, name: str | None = None, *, frozen: bool = True) -> DinoVisionTransformer:
    """Load an official ``dinov2_vit*14_pretrain.pth`` strictly.

    Parameters
    ----------
    path
        The official file (or a safetensors file with the same names).
    name
        Variant (``dinov2_vits14`` ...); ``None`` infers it from the embedding width.
    frozen
        Freeze the backbone (default).

    Raises
    ------
    CheckpointError
        Missing or unreadable file, unknown width, or the first mismatching tensor.
    """
    state = read_state_dict(path)
    if name is None:
        width = state["cls_token"].shape[-1] if "cls_token" in state else None
        matches = [key for key, config in DINOV2_CONFIGS.items() if config.embed_dim == width]
        if not matches:
            raise CheckpointError(
                f"{path}: cannot tell the DINOv2 variant (cls_token width {width}); pass name= explicitly"
            )
        name = matches[0]
    try:
        model = build_dinov2(name, frozen=frozen)
    except ModelError as exc:
        raise CheckpointError(str(exc)) from exc
    check_state_dict(model, state, str(path))
    return model


def load_official_head(path: PathLike, in_channels: int | None = None) -> CACHHead:
    """Load an official CACH head state_dict (``torch.save(change_head.state_dict())``) strictly.

    Parameters
    ----------
    path
        The head checkpoint.
    in_channels
        Backbone width; ``None`` reads it from ``adapterA.0.weight``.

    Raises
    ------
    CheckpointError
        Missing or unreadable file, or the first mismatching tensor.
    """
    state = read_state_dict(path)
    if in_channels is None:
        adapter = state.get("adapterA.0.weight")
        if adapter is None or adapter.dim() != 4:
            raise CheckpointError(
                f"{path}: missing tensor 'adapterA.0.weight', so this is not a CACH head checkpoint"
            )
        in_channels = int(adapter.shape[1])
    head = CACHHead(in_channels)
    check_state_dict(head, state, str(path))
    return head.eval()


def save_change_model(
    model: ChangeModel,
    path: PathLike,
    *,
    training_data: Any = None,
    include_backbone: bool = True,
) -> None:
    """Write a change model to a safetensors checkpoint with metadata.

    Parameters
    ----------
    model
        A model whose kind has a checkpoint format (:class:`~seg2change_core.change_model.CACHChangeModel`,
        :class:`~seg2change_core.baselines.CVABaseline`, or a registered kind's).
    path
        Output file (``.safetensors``).
    training_data
        JSON-serialisable summary of the training data (datasets, sizes, dates, ...).
    include_backbone
        Store the backbone's weights too (default). Without them, loading needs
        ``backbone_weights=`` (e.g. the official DINOv2 file), which keeps head-only files small.

    Raises
    ------
    ModelError
        For a model of another kind.
    """
    metadata: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": model.name,
        "normalisation": model.normalisation.to_json(),
        "tile_size": json.dumps(model.tile_size),
        "training_data": json.dumps(training_data),
        "software_version": seg2change_core.__version__,
        "baseline_fit": "null",
    }
    kind = kind_of(model)
    metadata["architecture"] = kind.name
    entries, tensors = kind.checkpoint_entries(model, include_backbone=include_backbone)
    metadata.update(entries)
    save_file(tensors, str(path), metadata={key: str(value) for key, value in metadata.items()})


def read_checkpoint_info(path: PathLike) -> CheckpointInfo:
    """Read and validate a project checkpoint's metadata without loading its tensors.

    Raises
    ------
    CheckpointError
        Missing or unreadable file, another format or format version, or an unknown architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}; give the path of a seg2change checkpoint")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"cannot read {path} as safetensors: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a seg2change checkpoint (metadata format {meta.get('format')!r}); official "
            "torch files load with load_official_head() or load_dinov2()"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {meta.get('format_version')!r}; this seg2change "
            f"{seg2change_core.__version__} reads version {FORMAT_VERSION}"
        )
    architecture = meta.get("architecture", "")
    try:
        get_change_model_kind(architecture)
    except ModelError:
        raise CheckpointError(
            f"{path}: unknown architecture {architecture!r}; this version knows "
            f"{list(available_change_models())} (a kind of your own must be registered first)"
        ) from None
    try:
        fit = json.loads(meta.get("baseline_fit", "null"))
        head = json.loads(meta.get("head_config", "null"))
        layers = json.loads(meta.get("layers", "null"))
        return CheckpointInfo(
            architecture=architecture,
            name=meta["name"],
            normalisation=InputNormalisation.from_json(meta["normalisation"]),
            software_version=meta.get("software_version", "unknown"),
            backbone=meta.get("backbone"),
            backbone_family=meta.get("backbone_family"),
            backbone_config=json.loads(meta.get("backbone_config", "null")),
            backbone_weights=meta.get("backbone_weights"),
            layers=None if layers is None else tuple(int(i) for i in layers),
            head_config=None if head is None else CACHConfig(**head),
            baseline_fit=None if fit is None else CVAFit(**fit),
            tile_size=json.loads(meta.get("tile_size", "null")),
            training_data=json.loads(meta.get("training_data", "null")),
            metadata=dict(meta),
        )
    except (KeyError, TypeError, ValueError, ModelError) as exc:
        raise CheckpointError(f"{path}: malformed checkpoint metadata ({type(exc).__name__}: {exc})") from exc


def load_change_model(path: PathLike, *, backbone_weights: PathLike | None = None) -> ChangeModel:
    """Build the change model a project checkpoint describes and load its weights strictly.

    Parameters
    ----------
    path
        A checkpoint written by :func:`save_change_model`.
    backbone_weights
        Backbone weights for a checkpoint saved without them (an official DINOv2 ``.pth`` or a
        safetensors/torch state_dict of the backbone). Ignored when the checkpoint includes them.

    Returns
    -------
    ChangeModel
        A :class:`CACHChangeModel` (in eval mode) or a :class:`CVABaseline`.

    Raises
    ------
    CheckpointError
        On any incompatibility, naming the first mismatch.
    """
    info = read_checkpoint_info(path)
    kind = get_change_model_kind(info.architecture)
    return kind.load(info, Path(path), None if backbone_weights is None else Path(backbone_weights))
