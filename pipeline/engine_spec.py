"""Specs of the inference engine: which models, how to tile, where to compute, what to look for.

Each spec is a frozen pydantic model that forbids unknown fields, so it can be nested in
:class:`~pipeline.spec.JobSpec` (fields ``models``, ``tiling``, ``cluster``, ``prompts``) and be
loaded from the same YAML. Invalid values fail at construction with a message that names the field
and the fix; :meth:`build` turns pydantic's error into a :class:`~pipeline.errors.JobSpecError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Self

import pydantic
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from pipeline.cluster_backend_specs import (
    LAUNCHED_KINDS,
    ClusterKind,
    LaunchedBackend,
    gather_backend_fields,
)
from pipeline.errors import JobSpecError
from pipeline.tiling import WindowProfile
from seg2change_core.errors import PromptError
from seg2change_core.prompts import CLASS_SEPARATOR, SYNONYM_SEPARATOR, ClassPrompt, PromptSet

__all__ = ["ClusterSpec", "ModelSpec", "PromptSpec", "TilingSpec"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")

#: Tile side used when neither the tiling spec nor the change model recommends one.
DEFAULT_TILE_SIZE = 512

#: Segmenters built into ``seg2change_core``: a job naming one is checked without importing torch
#: (the registry imports it), so that a bad job is refused at once.
BUILTIN_SEGMENTERS = ("clip", "spectral")


class _Spec(BaseModel):
    model_config = _FROZEN

    @classmethod
    def build(cls, **fields: Any) -> Self:
        """Validate keyword fields, raising :class:`JobSpecError` (naming field and fix) on problems."""
        try:
            return cls.model_validate(fields)
        except pydantic.ValidationError as exc:
            lines = []
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"]) or cls.__name__
                message = str(err["msg"]).removeprefix("Value error, ")
                if err["type"] == "extra_forbidden":
                    message = "is not a known field; check its spelling"
                lines.append(f"{where}: {message}")
            raise JobSpecError(f"invalid {cls.__name__}: " + "; ".join(lines)) from None


def _existing_file(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(f"{what} {value!r} is not an existing file; give the path of the weights file")
    return str(path.resolve())


class ModelSpec(_Spec):
    """Which change model and segmenter to run, and where.

    Attributes
    ----------
    checkpoint
        A project checkpoint (:func:`seg2change_core.checkpoints.save_change_model`): a CACH model
        or a fitted CVA baseline. ``None`` (default) runs the classical CVA baseline, which needs
        no weights.
    backbone_weights
        Backbone weights for a CACH checkpoint saved without them.
    change_model
        A change-model kind built without a checkpoint, by name
        (:func:`seg2change_core.change_kinds.register_change_model`); default: the CVA baseline
        (``"cva-baseline"``). Not with ``checkpoint``, whose metadata names its kind.
    change_options
        Keyword arguments of that kind's factory (JSON values).
    change_bands
        Bands the change model built without a checkpoint reads (default: every band of the
        cube). A checkpoint's bands come from its normalisation.
    segmenter
        Registered segmenter name (``"spectral"`` needs no weights, ``"clip"`` needs a local file).
    segmenter_options
        Keyword arguments of the segmenter (JSON values, e.g. ``{"weights": "clip.safetensors",
        "tokenizer": "bpe_simple_vocab_16e6.txt.gz"}``). The spectral segmenter gets the cube's
        bands unless ``bands`` is given.
    device
        ``"auto"`` (CUDA when the worker has it), ``"cpu"`` or ``"cuda"``.
    fit_pixels, fit_blocks, seed
        A change model that must be fitted (the unfitted CVA baseline) is fitted once per job on at
        most ``fit_pixels`` valid pixels drawn (seeded) from ``fit_blocks`` windows of 512 px spread
        evenly over the cube (independent of the block size), so no tile ever changes its threshold.
        The fit is stored in the change cube and reused when a run resumes.
    """

    checkpoint: str | None = None
    backbone_weights: str | None = None
    change_model: str | None = None
    change_options: dict[str, Any] = pydantic.Field(default_factory=dict)
    change_bands: tuple[str, ...] | None = None
    segmenter: str = "spectral"
    segmenter_options: dict[str, Any] = pydantic.Field(default_factory=dict)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    fit_pixels: int = 1_000_000
    fit_blocks: int = 16
    seed: int = 0

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint(cls, value: str | None) -> str | None:
        return _existing_file(value, "checkpoint")

    @field_validator("backbone_weights")
    @classmethod
    def _backbone(cls, value: str | None) -> str | None:
        return _existing_file(value, "backbone_weights")

    @field_validator("change_bands", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("segmenter")
    @classmethod
    def _segmenter(cls, value: str) -> str:
        if value in BUILTIN_SEGMENTERS:
            return value
        from seg2change_core.segmenters import available_segmenters

        if value not in available_segmenters():
            raise ValueError(f"unknown segmenter {value!r}; use one of {', '.join(available_segmenters())}")
        return value

    @field_validator("change_model")
    @classmethod
    def _change_model(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from seg2change_core.change_kinds import available_change_models, get_change_model_kind
        from seg2change_core.errors import ModelError

        try:
            get_change_model_kind(value)
        except ModelError:
            raise ValueError(
                f"unknown change model {value!r}; use one of {', '.join(available_change_models())}, or "
                "register yours with seg2change_core.change_kinds.register_change_model first"
            ) from None
        return value

    @field_validator("segmenter_options", "change_options")
    @classmethod
    def _json_options(cls, value: dict[str, Any], info: pydantic.ValidationInfo) -> dict[str, Any]:
        try:
            json.dumps(value, sort_keys=True)
        except TypeError as exc:
            raise ValueError(
                f"{info.field_name} must hold JSON values (strings, numbers, lists, mappings): {exc}"
            ) from None
        return value

    @field_validator("fit_pixels", "fit_blocks")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be at least 1, got {value}")
        return value

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.checkpoint is not None and (self.change_model is not None or self.change_options):
            raise ValueError(
                "change_model and change_options build a model without a checkpoint; a checkpoint's "
                "metadata names its own kind: drop one or the other"
            )
        if self.change_bands is not None and self.checkpoint is not None:
            raise ValueError(
                "change_bands applies to a change model built without a checkpoint; a checkpoint's bands come "
                "from its normalisation: drop change_bands"
            )
        if self.change_bands is not None and (
            not self.change_bands or len(set(self.change_bands)) != len(self.change_bands)
        ):
            raise ValueError(f"change_bands {self.change_bands} must name each band once")
        if self.backbone_weights is not None and self.checkpoint is None:
            raise ValueError("backbone_weights needs a CACH checkpoint; give checkpoint as well")
        return self


class TilingSpec(_Spec):
    """How the cube is cut for the models and for the workers.

    Attributes
    ----------
    tile_size
        Model tile side in pixels; default: the change model's recommendation (504 for CACH), else
        512.
    overlap
        Pixels shared by neighbouring tiles, at most half the tile; blending ramps over it.
    window
        Blending window profile: ``"cosine"`` (raised cosine) or ``"linear"``.
    batch_size
        Tiles per model call. A learned model's float32 output moves slightly with the batch a tile
        is computed in: on the 2048 px bench scene the demo CACH differed by up to 5.9e-6 between
        our batches and a naive run's, and by 0 with ``batch_size: 1``
        (``bench/naive_vs_blocked.py``).
    block_size
        Side of the blocks the workers compute and of the output chunks; default: the input cube's
        spatial chunk size. Larger blocks mean fewer tasks and more memory per worker.
    strip_size
        Width in pixels of the strips of block columns processed one after the other (rounded down
        to whole blocks, at least one); default 4096. Tile outputs are shared by the blocks of a
        strip and computed again at strip seams: wider strips compute fewer tiles twice and hold
        more tile outputs in worker memory (see :mod:`pipeline.tile_plan`). It does not change the
        result.
    """

    tile_size: int | None = None
    overlap: int = 64
    window: WindowProfile = "cosine"
    batch_size: int = 8
    block_size: int | None = None
    strip_size: int | None = None

    @field_validator("tile_size")
    @classmethod
    def _tile(cls, value: int | None) -> int | None:
        if value is not None and value < 16:
            raise ValueError(f"tile_size must be at least 16 pixels, got {value}; 512 is a good default")
        return value

    @field_validator("overlap")
    @classmethod
    def _overlap(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"overlap must be 0 or more pixels, got {value}")
        return value

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"batch_size must be at least 1, got {value}")
        return value

    @field_validator("block_size")
    @classmethod
    def _block(cls, value: int | None) -> int | None:
        if value is not None and value < 64:
            raise ValueError(f"block_size must be at least 64 pixels, got {value}; 1024 is a good default")
        return value

    @field_validator("strip_size")
    @classmethod
    def _strip(cls, value: int | None) -> int | None:
        if value is not None and value < 64:
            raise ValueError(f"strip_size must be at least 64 pixels, got {value}; 4096 is a good default")
        return value

    @model_validator(mode="after")
    def _check(self) -> TilingSpec:
        if self.tile_size is not None:
            self.check_overlap(self.tile_size)
        return self

    def check_overlap(self, tile_size: int) -> None:
        """Raise when :attr:`overlap` exceeds half of ``tile_size``."""
        if self.overlap > tile_size // 2:
            raise ValueError(
                f"overlap {self.overlap} exceeds half the tile ({tile_size} px); "
                f"use an overlap of at most {tile_size // 2}, or larger tiles"
            )

    def resolve_tile_size(self, recommended: int | None) -> int:
        """The tile side to use: this spec's, else the model's recommendation, else 512.

        Raises
        ------
        JobSpecError
            When the overlap exceeds half of the resolved tile.
        """
        tile = self.tile_size or recommended or DEFAULT_TILE_SIZE
        try:
            self.check_overlap(tile)
        except ValueError as exc:
            raise JobSpecError(f"tiling: {exc}") from None
        return tile


class ClusterSpec(_Spec):
    """Where the blocks are computed.

    Attributes
    ----------
    address
        Address of a running Dask scheduler (``tcp://host:8786``); default: start a local cluster.
    n_workers
        Workers of the local cluster; default: one per GPU with ``gpu``, else one in-process
        worker, or with ``processes`` one per core.
    threads_per_worker
        Threads per local worker; default: the cores shared among the in-process workers, 1 per
        worker process, or 2 per GPU worker (one model task at a time per GPU; the other thread
        blends and writes blocks).
    processes
        Local workers as separate processes instead of threads of this process (the default). The
        engine's work (torch, NumPy, Zarr codecs) releases the GIL, so threads keep the cores busy,
        share one copy of the models and start in a fraction of a second; processes isolate the
        workers and let a worker that exceeds ``memory_limit`` be restarted.
    memory_limit
        Memory limit per local worker (``"auto"``, ``"4GiB"``...).
    gpu
        Run on GPU workers: a local ``LocalCUDACluster`` (dask-cuda, when installed) or workers
        advertising a ``GPU`` resource, and every model task asks for ``GPU=1``.
    torch_threads
        Intra-op threads of torch in each worker; default: the cores divided among the workers.
    dashboard
        ``host:port`` at which the local cluster's scheduler serves its HTTP pages (dashboard,
        info pages, metrics), e.g. ``127.0.0.1:8787``; port 0 takes a free one. Default: none. The
        scheduler and workers listen on 127.0.0.1 only and, unless this is set, serve no HTTP
        pages; the pages carry no authentication, so keep the host 127.0.0.1 and reach them from
        another machine through an SSH tunnel (README, "Cluster dashboard").
    kind
        ``local`` or ``address`` (default: ``address`` when one is given, else ``local``), or a
        back-end whose workers the run launches and stops: ``slurm`` (dask-jobqueue) or
        ``kubernetes`` (dask-kubernetes). A job file writes such a back-end's fields flat beside
        ``kind`` (``{kind: slurm, queue: gpu, gpu: true, jobs: 4}``); they are gathered into
        ``backend``.
    backend
        The launched back-end (:class:`~pipeline.cluster_backend_specs.SlurmBackend` or
        :class:`~pipeline.cluster_backend_specs.KubernetesBackend`); None for the other kinds.
    """

    address: str | None = None
    n_workers: int | None = None
    threads_per_worker: int | None = None
    processes: bool = False
    memory_limit: str = "auto"
    gpu: bool = False
    torch_threads: int | None = None
    dashboard: str | None = None
    kind: ClusterKind | None = None
    backend: LaunchedBackend | None = None

    @model_validator(mode="before")
    @classmethod
    def _gather_backend(cls, value: Any) -> Any:
        return gather_backend_fields(value)

    @model_validator(mode="after")
    def _check_kind(self) -> ClusterSpec:
        if self.kind in LAUNCHED_KINDS:
            local = [
                name
                for name in (
                    "address",
                    "n_workers",
                    "threads_per_worker",
                    "processes",
                    "memory_limit",
                    "dashboard",
                )
                if getattr(self, name) != type(self).model_fields[name].default
            ]
            if local:
                raise ValueError(f"{', '.join(local)} apply to kind local or address only; drop them")
            if self.backend is None or self.backend.kind != self.kind or self.backend.gpu != self.gpu:
                raise ValueError(
                    f"kind {self.kind} needs its fields beside kind, e.g. {{kind: slurm, jobs: 4}}"
                )
        elif self.backend is not None:
            raise ValueError(f"backend applies to kind {' or '.join(LAUNCHED_KINDS)} only; set kind")
        elif self.kind == "local" and self.address is not None:
            raise ValueError("kind local takes no address; drop the address, or set kind: address")
        elif self.kind == "address" and self.address is None:
            raise ValueError("kind address needs the scheduler address, e.g. address: 'tcp://10.0.0.5:8786'")
        return self

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("address is empty; give the scheduler address, e.g. 'tcp://10.0.0.5:8786'")
        return value

    @field_validator("dashboard")
    @classmethod
    def _dashboard(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(
                f"dashboard {value!r} is not host:port; give e.g. '127.0.0.1:8787' (port 0: any free port)"
            )
        return value

    @field_validator("n_workers", "threads_per_worker", "torch_threads")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"must be at least 1, got {value}")
        return value

    def local_layout(self, cores: int) -> tuple[int, int]:
        """``(workers, threads per worker)`` of the local CPU cluster on a machine with ``cores`` cores."""
        if self.processes:
            threads = self.threads_per_worker or 1
            return self.n_workers or max(1, cores // threads), threads
        workers = self.n_workers or 1
        return workers, self.threads_per_worker or max(1, cores // workers)

    @model_validator(mode="after")
    def _check(self) -> ClusterSpec:
        if self.address is not None and self.n_workers is not None:
            raise ValueError(
                "n_workers applies to a local cluster only, but an address is given; "
                "drop n_workers or the address"
            )
        if self.address is not None and self.dashboard is not None:
            raise ValueError(
                "dashboard applies to a local cluster only, but an address is given; a running "
                "scheduler serves its own dashboard (dask scheduler --dashboard-address): drop dashboard"
            )
        return self


class PromptSpec(_Spec):
    """The classes to find, as a JSON/YAML-friendly spec of a :class:`~seg2change_core.prompts.PromptSet`.

    Attributes
    ----------
    classes
        One entry per class, synonyms separated by ``,`` (``"building,roof,house"``); also accepted
        as one string with classes separated by ``;``, or as lists of synonyms.
    background
        Background class (channel 0), or None.
    targets
        Target class names; empty: every class.
    """

    classes: tuple[str, ...]
    background: str | None = None
    targets: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = {"classes": value}
        if isinstance(value, dict):
            out = dict(value)
            classes = out.get("classes")
            if isinstance(classes, str):
                classes = [c for c in classes.split(CLASS_SEPARATOR) if c.strip()]
            if isinstance(classes, list | tuple):
                out["classes"] = tuple(
                    c if isinstance(c, str) else SYNONYM_SEPARATOR.join(c) for c in classes
                )
            targets = out.get("targets")
            if isinstance(targets, str):
                out["targets"] = tuple(t for t in targets.split(SYNONYM_SEPARATOR) if t.strip())
            return out
        return value

    @model_validator(mode="after")
    def _check(self) -> PromptSpec:
        try:
            prompts = self.prompt_set()
        except PromptError as exc:
            raise ValueError(str(exc)) from None
        if prompts.num_classes > 255:
            raise ValueError(
                f"{prompts.num_classes} classes do not fit the uint8 class maps (at most 255); "
                "ask for fewer classes"
            )
        return self

    def prompt_set(self) -> PromptSet:
        """The :class:`PromptSet` this spec describes."""
        return PromptSet(tuple(ClassPrompt.parse(c) for c in self.classes), self.background, self.targets)

    @classmethod
    def from_prompt_set(cls, prompts: PromptSet) -> PromptSpec:
        """The spec of an existing :class:`PromptSet`."""
        return cls(
            classes=tuple(str(c) for c in prompts.classes),
            background=prompts.background,
            targets=prompts.targets,
        )
