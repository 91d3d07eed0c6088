"""State dicts: read one from a safetensors or torch file, load one into a module strictly.

Shared by the checkpoint formats (:mod:`seg2change_core.checkpoints`) and the change-model kinds
(:mod:`seg2change_core.change_kinds`), so that every weights file is read the same safe way
(``weights_only=True``) and every mismatch is named.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from seg2change_core.errors import CheckpointError

__all__ = ["PathLike", "check_state_dict", "read_state_dict"]

PathLike = str | Path


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
