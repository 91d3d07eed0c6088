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
``architecture``     ``cach`` or ``cva-baseline``
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

:func:`load_change_model` rebuilds the right model from that metadata, checks it (architecture,
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import seg2change_core
from seg2change_core.backbones import DINOV2_CONFIGS, DinoVisionTransformer, build_backbone, build_dinov2
from seg2change_core.baselines import CVABaseline, CVAFit
from seg2change_core.cach import CACHConfig, CACHHead
from seg2change_core.change_model import CACHChangeModel, ChangeModel, InputNormalisation
from seg2change_core.errors import CheckpointError, ModelError

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
ARCHITECTURES = ("cach", "cva-baseline")

PathLike = str | Path


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


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict from a ``.safetensors`` file or a torch file (``weights_only=True``).

    Raises
    ------
    CheckpointError
        When the file is missing, unreadable, or not a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}; give the path of an existing weights file")
    try:
        if path.suffix == ".safetensors":
            loaded: Any = load_file(str(path))
        else:
            loaded = torch.load(path, weights_only=True, map_location="cpu")
    except (OSError, RuntimeError, SafetensorError, ValueError, EOFError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    except Exception as exc:  # torch.load raises pickle.UnpicklingError for non-tensor content
        raise CheckpointError(
            f"cannot read checkpoint {path} with weights_only=True ({type(exc).__name__}: {exc}); "
            "save it as a plain state_dict of tensors"
        ) from exc
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise CheckpointError(f"checkpoint {path} is not a state_dict (a mapping of names to tensors)")
    return dict(loaded)


def check_state_dict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``module`` strictly, naming the first mismatch on failure.

    Tensors are compared in the module's ``state_dict()`` order (a missing tensor or a wrong
    shape), then the checkpoint is checked for tensors the module does not have.

    Raises
    ------
    CheckpointError
        Naming the first missing, mis-shaped or unexpected tensor and the shapes involved.
    """
    expected = module.state_dict()
    for name, tensor in expected.items():
        if name not in state_dict:
            raise CheckpointError(
                f"{source}: missing tensor {name!r} (the model expects shape {list(tensor.shape)}); "
                f"the checkpoint does not match {type(module).__name__}"
            )
        if tuple(state_dict[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source}: tensor {name!r} has shape {list(state_dict[name].shape)} but the model expects "
                f"{list(tensor.shape)}; the checkpoint was made for another configuration"
            )
    for name in state_dict:
        if name not in expected:
            raise CheckpointError(
                f"{source}: unexpected tensor {name!r} that {type(module).__name__} does not have; "
                "the checkpoint was made for another architecture"
            )
    module.load_state_dict(dict(state_dict), strict=True)


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
        A :class:`CACHChangeModel` or a :class:`CVABaseline`.
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
    tensors: dict[str, torch.Tensor] = {}
    if isinstance(model, CACHChangeModel):
        backbone = model.backbone
        metadata.update(
            architecture="cach",
            backbone=str(backbone.name),
            backbone_family=str(backbone.family),
            backbone_config=json.dumps(backbone.config_dict()),
            backbone_weights="included" if include_backbone else "external",
            layers=json.dumps(list(model.layers)),
            head_config=json.dumps(asdict(model.head.config)),
        )
        state = model.state_dict()
        tensors = {
            name: tensor.detach().contiguous().cpu()
            for name, tensor in state.items()
            if include_backbone or not name.startswith("backbone.")
        }
    elif isinstance(model, CVABaseline):
        metadata["architecture"] = "cva-baseline"
        metadata["baseline_fit"] = json.dumps(None if model.fitted is None else asdict(model.fitted))
    else:
        raise ModelError(f"cannot save a {type(model).__name__}; expected CACHChangeModel or CVABaseline")
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
    if architecture not in ARCHITECTURES:
        raise CheckpointError(
            f"{path}: unknown architecture {architecture!r}; this version knows {list(ARCHITECTURES)}"
        )
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
    if info.architecture == "cva-baseline":
        return CVABaseline(info.normalisation, fit=info.baseline_fit, name=info.name)

    if info.backbone_family is None or info.backbone_config is None or info.head_config is None:
        raise CheckpointError(
            f"{path}: a cach checkpoint needs backbone_family, backbone_config and head_config"
        )
    try:
        backbone = build_backbone(info.backbone_family, info.backbone_config)
        model = CACHChangeModel(
            backbone,
            CACHHead(**asdict(info.head_config)),
            info.normalisation,
            layers=info.layers,
            name=info.name,
            tile_size=info.tile_size,
        )
    except ModelError as exc:
        raise CheckpointError(f"{path}: incompatible checkpoint: {exc}") from exc

    tensors = read_state_dict(path)
    if info.backbone_weights == "included":
        check_state_dict(model, tensors, str(path))
    else:
        if backbone_weights is None:
            raise CheckpointError(
                f"{path} was saved without backbone weights ({info.backbone}); pass "
                "backbone_weights= with the backbone's weights file"
            )
        head_tensors = {k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")}
        stray = [k for k in tensors if not k.startswith("head.")]
        if stray:
            raise CheckpointError(f"{path}: unexpected tensor {stray[0]!r} in a checkpoint without backbone")
        check_state_dict(model.head, head_tensors, str(path))
        check_state_dict(model.backbone, read_state_dict(backbone_weights), str(backbone_weights))
    return model.eval()
