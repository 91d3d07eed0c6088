"""Kinds of change model: one registry that knows how to build each kind, from a job or a checkpoint.

A *kind* is the recipe of one family of change models (the CACH head on a backbone, the CVA
baseline, a user's own model). It builds the model from a job's spec (band names and JSON
options), from a project checkpoint's metadata and tensors, and writes the model's part of a
checkpoint. Two are built in (:mod:`seg2change_core.builtin_change_kinds`):

``"cach"``
    Seg2Change's learned change head on a backbone; from checkpoints only.
``"cva-baseline"``
    Change vector analysis with an Otsu threshold fitted once per job; needs no weights and is
    the engine's default change model.

A new change model is one registered class or function in the user's own code::

    @register_change_model("absdiff")
    def absdiff(bands: tuple[str, ...], *, gain: float = 10.0) -> ChangeModel:
        return AbsDiff(bands, gain)

and a job asks for it with ``models: {change_model: absdiff, change_options: {gain: 5}}``. The
module that registers it must be imported where the job is built and where the models are built
(for process workers: every worker); a package may instead declare it as an entry point of the
group ``seg2change.change_models``, which the registry loads the first time a name is unknown.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, TypeVar, cast, runtime_checkable

import torch

from seg2change_core.baselines import CVAFit
from seg2change_core.change_model import ChangeModel
from seg2change_core.errors import CheckpointError, ModelError
from seg2change_core.plugins import PluginGroup

if TYPE_CHECKING:
    from seg2change_core.checkpoints import CheckpointInfo

__all__ = [
    "ENTRY_POINT_GROUP",
    "PLUGINS",
    "ChangeModelInfo",
    "ChangeModelKind",
    "FitsOncePerJob",
    "available_change_models",
    "get_change_model_kind",
    "kind_of",
    "needs_job_fit",
    "register_change_model",
]

#: Entry-point group under which installed packages declare their change-model kinds.
ENTRY_POINT_GROUP = "seg2change.change_models"

#: The installed packages' change-model kinds, imported on the first unknown name.
PLUGINS = PluginGroup(ENTRY_POINT_GROUP, "change model", ModelError)


@dataclass(frozen=True)
class ChangeModelInfo:
    """What a client knows of a change model before the workers build it.

    Attributes
    ----------
    name
        Model name (recorded in the outputs' provenance).
    bands
        Bands it reads, in channel order.
    tile_size
        Recommended tile side, or None.
    needs_fit
        True for a model that must be fitted once per job (:class:`FitsOncePerJob`) before tiled use.
    """

    name: str
    bands: tuple[str, ...]
    tile_size: int | None
    needs_fit: bool


@runtime_checkable
class FitsOncePerJob(ChangeModel, Protocol):
    """A change model with values fitted once per job on a pixel sample (the CVA baseline).

    The engine fits it on the client, ships the fitted values to the workers and sets
    :attr:`fitted` there, so no tile fits its own threshold.
    """

    fitted: CVAFit | None

    def fit(
        self, before: torch.Tensor, after: torch.Tensor, max_samples: int = ..., seed: int = ...
    ) -> CVAFit:
        """Fit on raw ``(B, bands, H, W)`` samples, store the values on the model and return them."""
        ...


def needs_job_fit(model: object) -> TypeGuard[FitsOncePerJob]:
    """True when ``model`` must be fitted once per job and is not fitted yet."""
    return isinstance(model, FitsOncePerJob) and model.fitted is None


class ChangeModelKind:
    """One kind of change model; subclass it and decorate with :func:`register_change_model`.

    Override :meth:`build` for a model made from a job's spec, :meth:`load` (and :meth:`saves`,
    :meth:`checkpoint_entries`) for one stored in project checkpoints. The other methods have
    defaults that fit most kinds.

    Attributes
    ----------
    name
        The registry name, set by :func:`register_change_model`; also the ``architecture`` of the
        kind's checkpoints.
    """

    name: str = ""

    def build(self, bands: tuple[str, ...], options: Mapping[str, Any]) -> ChangeModel:
        """Build the model from a job's spec.

        Parameters
        ----------
        bands
            The job's ``models.change_bands``, else every band of the input cube, in cube order.
        options
            The job's ``models.change_options`` (JSON values).

        Raises
        ------
        ModelError
            When the options do not fit, or when the kind is built from checkpoints only.
        """
        raise ModelError(
            f"change model kind {self.name!r} is built from a checkpoint only; set models.checkpoint "
            "to a checkpoint of it and drop models.change_model"
        )

    def describe(self, bands: tuple[str, ...], options: Mapping[str, Any]) -> ChangeModelInfo:
        """What the model :meth:`build` makes reads and needs (default: build it and look)."""
        model = self.build(bands, options)
        return ChangeModelInfo(model.name, tuple(model.bands), model.tile_size, needs_job_fit(model))

    def load(self, info: CheckpointInfo, path: Path, backbone_weights: Path | None) -> ChangeModel:
        """Build the model a project checkpoint describes and load its weights strictly.

        Raises
        ------
        CheckpointError
            On any incompatibility, naming the first mismatch.
        """
        raise CheckpointError(f"{path}: change model kind {self.name!r} has no checkpoint format")

    def describe_checkpoint(self, info: CheckpointInfo) -> ChangeModelInfo:
        """What a checkpoint's model reads and needs, from its metadata alone (no weights read)."""
        return ChangeModelInfo(info.name, info.normalisation.bands, info.tile_size, False)

    def saves(self, model: object) -> bool:
        """True when :meth:`checkpoint_entries` writes ``model`` (default: no model)."""
        return False

    def checkpoint_entries(
        self, model: ChangeModel, *, include_backbone: bool
    ) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
        """The kind's metadata entries (strings) and tensors of a checkpoint of ``model``.

        Raises
        ------
        ModelError
            When the kind has no checkpoint format.
        """
        raise ModelError(f"change model kind {self.name!r} has no checkpoint format")


class _FunctionKind(ChangeModelKind):
    """A kind made from a plain factory ``factory(bands, **options) -> ChangeModel``."""

    def __init__(self, name: str, factory: Callable[..., ChangeModel]) -> None:
        self.name = name
        self.factory = factory

    def build(self, bands: tuple[str, ...], options: Mapping[str, Any]) -> ChangeModel:
        try:
            inspect.signature(self.factory).bind(bands, **options)
        except TypeError as exc:
            raise ModelError(
                f"change model {self.name!r} cannot be built with options {dict(options)}: {exc}; "
                "check models.change_options"
            ) from None
        return self.factory(bands, **options)


K = TypeVar("K", bound="type[ChangeModelKind] | Callable[..., ChangeModel]")

_REGISTRY: dict[str, ChangeModelKind] = {}
_SOURCES: dict[str, object] = {}


def register_change_model(name: str) -> Callable[[K], K]:
    """Class or function decorator that registers a change-model kind under ``name``.

    Parameters
    ----------
    name
        The registry name (what a job's ``models.change_model`` says); must not be taken yet.

    The decorated object is a :class:`ChangeModelKind` subclass (instantiated without arguments)
    or a factory ``f(bands, **options) -> ChangeModel``; it is returned unchanged.

    Raises
    ------
    ModelError
        When another kind already has that name (the message lists the registered kinds).
    """
    if not name:
        raise ModelError("a change model kind needs a non-empty name")

    def decorator(source: K) -> K:
        if name in _REGISTRY and _SOURCES[name] is not source:
            raise ModelError(
                f"a change model kind named {name!r} is already registered (known kinds: "
                f"{', '.join(available_change_models())}); choose another name"
            )
        if isinstance(source, type) and issubclass(source, ChangeModelKind):
            kind = source()
            kind.name = name
        elif callable(source):
            kind = _FunctionKind(name, cast(Callable[..., ChangeModel], source))
        else:
            raise ModelError(
                f"register_change_model needs a ChangeModelKind subclass or a factory, got {source!r}"
            )
        _REGISTRY[name] = kind
        _SOURCES[name] = source
        return source

    return decorator


def get_change_model_kind(name: str) -> ChangeModelKind:
    """The kind registered under ``name`` (installed packages' entry points are loaded on a miss).

    Raises
    ------
    ModelError
        When no kind has that name (the message lists the registered kinds).
    """
    if name not in _REGISTRY:
        PLUGINS.load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(
            f"no change model kind named {name!r}; known kinds: {', '.join(available_change_models())}; "
            "register one with seg2change_core.change_kinds.register_change_model"
        ) from None


def available_change_models() -> tuple[str, ...]:
    """Registered change-model kind names, sorted."""
    return tuple(sorted(_REGISTRY))


def kind_of(model: object) -> ChangeModelKind:
    """The kind that writes checkpoints of ``model``.

    Raises
    ------
    ModelError
        When no registered kind saves models of that type.
    """
    for kind in _REGISTRY.values():
        if kind.saves(model):
            return kind
    savers = [
        name for name, kind in sorted(_REGISTRY.items()) if type(kind).saves is not ChangeModelKind.saves
    ]
    raise ModelError(
        f"cannot save a {type(model).__name__}: no change model kind saves it (kinds with a checkpoint "
        f"format: {', '.join(savers)})"
    )


# Importing the built-ins registers them; they import this module's registry, defined above.
from seg2change_core import builtin_change_kinds  # noqa: E402, F401
