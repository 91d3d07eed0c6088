"""The job's models: described on the client, built once per worker process and kept there.

The client never ships models to the workers. It ships a :class:`ModelRuntime`, a few hundred
bytes saying which models to build (the :class:`~pipeline.engine_spec.ModelSpec`, the cube's bands
and the values fitted once per job); each worker process builds the models the first time a task
asks for them (:func:`get_models`) and keeps them in a per-process cache keyed by
:meth:`ModelRuntime.key`, so loading weights happens once per worker, not once per block. The cache
holds the most recent two jobs' models. A worker with several threads builds them once, on a thread
of its own that a task starts before reading its input (:func:`start_building`).

The classical baseline (CVA with an Otsu threshold) must not fit its threshold per tile, or the
result would depend on the tiling; :func:`fit_change_model` fits it once per job on a pixel sample
of the cube and the fitted values travel in the runtime. The built-in baseline differences raw
surface reflectance (normalisation ``mean 0, std 1, scale 1``).

Which change model a spec means is the business of the change-model kinds
(:mod:`seg2change_core.change_kinds`): a checkpoint's ``architecture``, else the job's
``models.change_model``. :class:`ChangeModelInfo` lives there and is re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.engine_spec import ModelSpec
from pipeline.errors import InferenceError
from pipeline.memory_release import map_large_allocations
from seg2change_core.baselines import CVAFit
from seg2change_core.change_kinds import ChangeModelInfo, get_change_model_kind, needs_job_fit
from seg2change_core.change_model import ChangeModel
from seg2change_core.checkpoints import load_change_model, read_checkpoint_info
from seg2change_core.errors import SegmenterError
from seg2change_core.segmenters import Segmenter, get_segmenter

__all__ = [
    "ChangeModelInfo",
    "LoadedModels",
    "ModelIdentity",
    "ModelRuntime",
    "build_models",
    "change_model_info",
    "clear_model_cache",
    "file_sha256",
    "fit_change_model",
    "get_models",
    "model_identities",
    "start_building",
]

log = logging.getLogger(__name__)

#: The change-model kind a job without checkpoint and ``change_model`` runs (the classical baseline).
DEFAULT_CHANGE_KIND = "cva-baseline"


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelIdentity:
    """What identifies a model in an output's provenance and in the job fingerprint.

    Attributes
    ----------
    role
        ``"change"`` or ``"segmenter"``.
    name
        Model name.
    source
        Checkpoint path, or ``"builtin"``.
    sha256
        SHA-256 of the weights file(s) (``;``-joined when several), or ``"none"``.
    """

    role: str
    name: str
    source: str
    sha256: str

    def as_dict(self) -> dict[str, str]:
        """The identity as a JSON-ready mapping."""
        return asdict(self)


def change_model_info(spec: ModelSpec, cube_bands: tuple[str, ...]) -> ChangeModelInfo:
    """Describe the change model from the spec or the checkpoint's metadata (no weights read).

    The change-model kind (:mod:`seg2change_core.change_kinds`) describes it: a checkpoint's
    ``architecture``, else the job's ``models.change_model`` (default: the CVA baseline).
    """
    if spec.checkpoint is None:
        kind = get_change_model_kind(spec.change_model or DEFAULT_CHANGE_KIND)
        return kind.describe(spec.change_bands or cube_bands, spec.change_options)
    info = read_checkpoint_info(spec.checkpoint)
    return get_change_model_kind(info.architecture).describe_checkpoint(info)


def _build_change_model(spec: ModelSpec, cube_bands: tuple[str, ...]) -> ChangeModel:
    if spec.checkpoint is None:
        kind = get_change_model_kind(spec.change_model or DEFAULT_CHANGE_KIND)
        return kind.build(spec.change_bands or cube_bands, spec.change_options)
    return load_change_model(spec.checkpoint, backbone_weights=spec.backbone_weights)


def model_identities(spec: ModelSpec, cube_bands: tuple[str, ...]) -> tuple[ModelIdentity, ...]:
    """Identities of the change model and the segmenter (hashing their weights files)."""
    info = change_model_info(spec, cube_bands)
    if spec.checkpoint is None:
        source = "builtin" if spec.change_model is None else f"registered kind {spec.change_model}"
        change = ModelIdentity("change", info.name, source, "none")
    else:
        digests = [file_sha256(spec.checkpoint)]
        if spec.backbone_weights is not None:
            digests.append(file_sha256(spec.backbone_weights))
        change = ModelIdentity("change", info.name, spec.checkpoint, ";".join(digests))
    files = {
        key: str(value)
        for key, value in sorted(spec.segmenter_options.items())
        if isinstance(value, str) and Path(value).expanduser().is_file()
    }
    digests = [f"{key}={file_sha256(Path(path).expanduser())}" for key, path in files.items()]
    segmenter = ModelIdentity(
        "segmenter",
        spec.segmenter,
        ";".join(files.values()) or "builtin",
        ";".join(digests) or "none",
    )
    return change, segmenter


@dataclass(frozen=True)
class ModelRuntime:
    """Everything a worker needs to build the job's models; small and picklable.

    Attributes
    ----------
    spec
        The model spec.
    cube_bands
        Bands of the input cube, in its order.
    fit
        ``(threshold, scale)`` fitted once per job for a baseline that needs it, else None.
    torch_threads
        Intra-op threads for torch in the worker process, or None to leave torch's default.
    """

    spec: ModelSpec
    cube_bands: tuple[str, ...]
    fit: tuple[float, float] | None = None
    torch_threads: int | None = None

    def key(self) -> str:
        """Hash of what determines the built models (not the thread count)."""
        doc = {"spec": self.spec.model_dump(mode="json"), "bands": self.cube_bands, "fit": self.fit}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class LoadedModels:
    """The built models of a job, and where their inputs come from in the cube.

    Attributes
    ----------
    change
        The change model.
    segmenter
        The segmenter.
    device
        Where the models run; inputs are moved there.
    change_bands, segmenter_bands
        Indices into the cube's band axis of each model's input channels.
    """

    change: ChangeModel
    segmenter: Segmenter
    device: torch.device
    change_bands: tuple[int, ...]
    segmenter_bands: tuple[int, ...]


def _device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise InferenceError(
                "models.device is 'cuda' but this worker has no CUDA device; run on GPU workers "
                "(cluster.gpu: true) or set models.device to 'auto' or 'cpu'"
            )
        return torch.device("cuda")
    return torch.device("cpu")


def use_exact_float32() -> None:
    """Keep float32 matrix products and convolutions exact on CUDA: no TF32.

    PyTorch runs cuDNN convolutions in TF32 by default; on an H200 that moved CACH's outputs by up
    to 7.9e-3 from the reference (0.02 % of change decisions flipped), against 1.1e-5 with TF32 off
    (``bench/gpu_check.py``). Results must not depend on the device they were computed on.
    """
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _band_indices(role: str, name: str, wanted: tuple[str, ...], cube: tuple[str, ...]) -> tuple[int, ...]:
    missing = [b for b in wanted if b not in cube]
    if missing:
        raise InferenceError(
            f"the {role} {name!r} reads bands {', '.join(wanted)} but the cube has only "
            f"{', '.join(cube)}; add {', '.join(missing)} to the job's bands and rebuild the cube"
        )
    return tuple(cube.index(b) for b in wanted)


#: Bands of visible-light imagery (8-bit RGB aerial or satellite pictures), from which the
#: spectral segmenter's indices (NDVI, NDWI, NDBI...) cannot be computed.
VISIBLE_BANDS = frozenset({"coastal", "blue", "green", "red"})


def _refuse_visible_only(bands: tuple[str, ...]) -> None:
    if bands and set(bands) <= VISIBLE_BANDS:
        raise SegmenterError(
            f"the spectral segmenter reads near-infrared and short-wave infrared bands (its classes come "
            f"from indices such as NDVI and NDWI), but the cube has only {', '.join(bands)} (RGB "
            "imagery); for RGB imagery use the 'clip' segmenter with local CLIP weights "
            "(models: {segmenter: clip, segmenter_options: {weights: ..., tokenizer: ...}}), or add "
            "nir/swir16/swir22 bands if the imagery has them"
        )


def build_models(runtime: ModelRuntime) -> LoadedModels:
    """Build the change model and the segmenter a runtime describes (no caching).

    Raises
    ------
    InferenceError
        When a model reads a band the cube lacks, a baseline is unfitted, or CUDA is missing.
    seg2change_core.errors.ModelError
        When a checkpoint or the segmenter cannot be built (the message names the fix).
    """
    spec = runtime.spec
    device = _device(spec.device)
    if device.type == "cuda":
        use_exact_float32()
    change = _build_change_model(spec, runtime.cube_bands)
    if needs_job_fit(change):
        if runtime.fit is None:
            raise InferenceError(
                f"the change model {change.name!r} must be fitted once per job before tiled use; "
                "call pipeline.models.fit_change_model (run_inference does this)"
            )
        change.fitted = CVAFit(*runtime.fit)
    if isinstance(change, torch.nn.Module):
        change.to(device).eval()

    options: dict[str, Any] = dict(spec.segmenter_options)
    if spec.segmenter == "spectral":
        options.setdefault("bands", runtime.cube_bands)
        _refuse_visible_only(tuple(options["bands"]))
    elif spec.segmenter == "clip":
        options.setdefault("device", str(device))
    segmenter = get_segmenter(spec.segmenter, **options)
    return LoadedModels(
        change=change,
        segmenter=segmenter,
        device=device,
        change_bands=_band_indices("change model", change.name, change.bands, runtime.cube_bands),
        segmenter_bands=_band_indices("segmenter", segmenter.name, segmenter.bands, runtime.cube_bands),
    )


_CACHE: OrderedDict[str, LoadedModels] = OrderedDict()
_CACHE_SIZE = 2
_BUILDING: dict[str, Future[LoadedModels]] = {}
_LOCK = threading.Lock()


def _build_into_cache(runtime: ModelRuntime, key: str, pending: Future[LoadedModels]) -> None:
    map_large_allocations()  # tile buffers and activations then leave no high-water mark in malloc's heaps
    if runtime.torch_threads is not None:
        torch.set_num_threads(runtime.torch_threads)
    try:
        log.info(
            "building models (%s, segmenter %s) in process %d",
            runtime.spec.checkpoint or "built-in baseline",
            runtime.spec.segmenter,
            os.getpid(),
        )
        models = build_models(runtime)
    except BaseException as exc:
        with _LOCK:
            del _BUILDING[key]  # a later task tries again
        pending.set_exception(exc)
        return
    with _LOCK:
        _CACHE[key] = models
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        del _BUILDING[key]
    pending.set_result(models)


def start_building(runtime: ModelRuntime) -> Future[LoadedModels]:
    """The runtime's models, as a future: done when cached, else built on a thread of its own.

    A task calls this before it reads its input, so that a worker's first read and the model
    build (seconds for DINOv2 weights) overlap; :func:`get_models` then waits for the result. One
    build per runtime runs at a time in a process, whichever threads ask for it.
    """
    key = runtime.key()
    with _LOCK:
        models = _CACHE.get(key)
        if models is not None:
            _CACHE.move_to_end(key)
            done: Future[LoadedModels] = Future()
            done.set_result(models)
            return done
        pending = _BUILDING.get(key)
        if pending is None:
            pending = _BUILDING[key] = Future()
            threading.Thread(
                target=_build_into_cache,
                args=(runtime, key, pending),
                name="seg2change-build-models",
                daemon=True,
            ).start()
        return pending


def get_models(runtime: ModelRuntime) -> LoadedModels:
    """The runtime's models, built on first use in this process and reused afterwards.

    Also sets the calling thread's torch intra-op threads to ``runtime.torch_threads``: torch's
    thread count is per calling thread (OpenMP), so each worker thread sets its own.
    """
    if runtime.torch_threads is not None and torch.get_num_threads() != runtime.torch_threads:
        torch.set_num_threads(runtime.torch_threads)
    return start_building(runtime).result()


def clear_model_cache() -> None:
    """Forget the models built in this process."""
    with _LOCK:
        _CACHE.clear()


def fit_change_model(runtime: ModelRuntime, before: torch.Tensor, after: torch.Tensor) -> ModelRuntime:
    """Fit a baseline change model once on a pixel sample and return the runtime that carries the fit.

    Parameters
    ----------
    runtime
        A runtime whose change model may need fitting.
    before, after
        ``(1, len(cube_bands), 1, N)`` raw reflectance of ``N`` valid sample pixels, cube band order.

    Returns
    -------
    ModelRuntime
        ``runtime`` unchanged when nothing needs fitting, else with :attr:`ModelRuntime.fit` set.
    """
    info = change_model_info(runtime.spec, runtime.cube_bands)
    if not info.needs_fit:
        return runtime
    spec = runtime.spec
    model = _build_change_model(spec, runtime.cube_bands)
    if not needs_job_fit(model):
        raise InferenceError(
            f"the change model {info.name!r} is described as needing a fit but is built fitted; its "
            "kind's describe() and build() disagree"
        )
    index = list(_band_indices("change model", info.name, model.bands, runtime.cube_bands))
    # Torch's parallel reductions round differently with different thread counts; fitting on one
    # thread gives the same bits on every machine, so a resumed or repeated job gets the same fit.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit = model.fit(before[:, index], after[:, index], max_samples=spec.fit_pixels, seed=spec.seed)
    finally:
        torch.set_num_threads(threads)
    log.info("fitted %s once for the job: threshold %.6g, scale %.6g", info.name, fit.threshold, fit.scale)
    return ModelRuntime(spec, runtime.cube_bands, (fit.threshold, fit.scale), runtime.torch_threads)
