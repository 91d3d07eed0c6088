"""The embedded default job: a generated scene, served by an embedded STAC API, run end to end locally.

``seg2change demo`` runs this. It needs nothing but the project: the scene is generated (and
reused on the next run when its parameters are the same), the STAC API is started on 127.0.0.1
and stopped afterwards, the models are the demo checkpoint shipped in the package (a small CACH
trained on other generated scenes) and the spectral segmenter, and the compute runs on a local
Dask cluster. The job it runs is written to ``job.yaml`` beside the outputs, pointing at the
scene's items file so that it can be run again with ``seg2change run`` without any server.
Because the scene is generated, the change map's accuracy against the truth is reported too:
overall (:func:`change_accuracy`), per target class (:func:`target_accuracy`: a target's change is
what a user asked for, and a high overall IoU can hide a target that is missed) and per kind of
generated change (:func:`change_kind_recall`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import yaml
import zarr
from numpy.typing import NDArray
from rasterio.windows import Window

from pipeline.progress import staged_progress
from pipeline.run import RunResult, run_job
from pipeline.spec import JobSpec
from pipeline.stac_servers import serve_collection
from pipeline.storage import Location, LocationLike
from pipeline.synthetic import (
    LAND_COVER_PROMPTS,
    ChangeType,
    GeneratedScene,
    LandCover,
    SceneSpec,
    ensure_scene,
    generate_scene,
    scene_is_current,
)
from pipeline.synthetic.sequence import GeneratedSequence
from seg2change_core.metrics import BinaryConfusion, BinaryScores, binary_scores

__all__ = [
    "DEMO_PROMPTS",
    "ChangeKindRecall",
    "DemoResult",
    "TargetAccuracy",
    "change_accuracy",
    "change_kind_recall",
    "demo_checkpoint",
    "demo_job_fields",
    "demo_sequence_fields",
    "generated_classes",
    "run_demo",
    "score_targets",
    "target_accuracy",
]

log = logging.getLogger(__name__)

#: The classes the demo asks for, in the user's words, and the targets of binary change.
DEMO_PROMPTS: dict[str, Any] = {
    "classes": list(LAND_COVER_PROMPTS.values()),
    "targets": ["building", "water", "burned area"],
}


@dataclass(frozen=True)
class DemoResult:
    """What the demo produced and where."""

    workdir: Path
    scene: GeneratedScene
    job_file: Path
    run: RunResult
    accuracy: BinaryScores
    targets: tuple[TargetAccuracy, ...]
    kinds: tuple[ChangeKindRecall, ...]


def demo_checkpoint() -> Path | None:
    """Return the demo CACH checkpoint shipped in the package, or None when it is absent."""
    path = Path(str(resources.files("seg2change_core") / "assets" / "demo_cach.safetensors"))
    return path if path.is_file() else None


def demo_job_fields(scene: GeneratedScene, catalog: str, output: Path) -> dict[str, Any]:
    """Return the job fields that analyse a generated scene from a given catalog."""
    return {
        **_generated_scene_fields(scene, catalog),
        "before": f"{scene.before_window[0].isoformat()}/{scene.before_window[1].isoformat()}",
        "after": f"{scene.after_window[0].isoformat()}/{scene.after_window[1].isoformat()}",
        "output": str(output),
        "block_size": 512,
    }


def demo_sequence_fields(scene: GeneratedSequence, catalog: str | None = None) -> dict[str, Any]:
    """Return the base job fields of a sequence over a generated sequence's windows.

    Parameters
    ----------
    scene
        The generated sequence.
    catalog
        The catalog to search; default the sequence's own items file.

    Returns
    -------
    dict
        Every field but ``windows`` and ``output`` (demo models, 256 px blocks).
    """
    return {**_generated_scene_fields(scene, catalog or str(scene.items_path)), "block_size": 256}


def _generated_scene_fields(scene: GeneratedScene | GeneratedSequence, catalog: str) -> dict[str, Any]:
    """The fields that read a generated scene's bands from ``catalog`` and analyse them with the demo
    models: all but the windows, the output and the block size."""
    checkpoint = demo_checkpoint()
    crs = f"EPSG:{scene.spec.epsg}"
    return {
        "aoi": {"bbox": list(scene.bbox_utm), "crs": crs},
        "catalog": catalog,
        "collections": [scene.spec.collection_id],
        "bands": ["blue", "green", "red", "nir", "swir16", "swir22"],
        "quality": "synthetic",
        "grid": {"crs": crs, "resolution": scene.spec.resolution},
        "cloud_limit": 90,
        "prompts": DEMO_PROMPTS,
        "models": {"checkpoint": str(checkpoint) if checkpoint else None, "segmenter": "spectral"},
        # The scene's COGs lie beside its items; served by a STAC API they are read only from there.
        "asset_roots": [str(scene.root)],
    }


def change_accuracy(change_cube: LocationLike, truth_change: Path) -> BinaryScores:
    """Score a change cube's binary change against a truth raster on the same grid, block by block.

    The truth holds 0 for no change, a positive change code for change, 255 for nodata; the cube's
    nodata pixels (255) are left out.
    """
    change = zarr.open_array(Location.parse(change_cube).zarr_store(read_only=True), path="change", mode="r")
    confusion = BinaryConfusion()
    with rasterio.open(truth_change) as truth:
        if (truth.height, truth.width) != tuple(change.shape):
            raise ValueError(f"truth {truth.shape} and change cube {change.shape} are not on one grid")
        step = 1024
        for row in range(0, truth.height, step):
            for col in range(0, truth.width, step):
                window = Window(col, row, min(step, truth.width - col), min(step, truth.height - row))
                expected = truth.read(1, window=window)
                predicted = np.asarray(change[row : row + window.height, col : col + window.width])
                valid = (expected != 255) & (predicted != 255)
                confusion.update(predicted[valid], (expected[valid] > 0).astype("uint8"))
    return confusion.scores()


@dataclass(frozen=True)
class TargetAccuracy:
    """How well the change into or out of one target class was found, against the generated truth.

    A truth pixel of target ``t`` changed and is ``t`` on either date in the generated class maps;
    a flagged pixel is 1 in the cube's ``target_change`` layer of ``t`` (the agnostic change gated
    by the segmenter's class on either date). Both follow the class-union rule of
    :mod:`seg2change_core.metrics`.

    Attributes
    ----------
    target
        The target's label in the change cube (e.g. ``"building"``).
    classes
        The generator's classes it stands for.
    scores
        Binary scores of the scored pixels (``tp + fn`` truth pixels, ``tp + fp`` flagged).
    unscored
        Truth pixels left out because the change cube has no data there (no clear observation).
    """

    target: str
    classes: tuple[LandCover, ...]
    scores: BinaryScores
    unscored: int

    @property
    def truth_pixels(self) -> int:
        """Scored pixels whose truth is a change of this target."""
        return self.scores.tp + self.scores.fn

    @property
    def flagged_pixels(self) -> int:
        """Scored pixels the change cube flags as a change of this target."""
        return self.scores.tp + self.scores.fp


@dataclass(frozen=True)
class ChangeKindRecall:
    """Share of one generated kind of change that the agnostic change map detects.

    Attributes
    ----------
    kind
        The generator's change type.
    truth_pixels
        Scored pixels of that kind.
    detected_pixels
        Those of them the change map marks as changed.
    unscored
        Pixels of that kind where the change cube has no data.
    """

    kind: ChangeType
    truth_pixels: int
    detected_pixels: int
    unscored: int

    @property
    def recall(self) -> float:
        """``detected / truth`` (NaN without truth pixels)."""
        return self.detected_pixels / self.truth_pixels if self.truth_pixels else math.nan


def _names(text: str) -> set[str]:
    return {" ".join(name.casefold().split()) for name in text.split(",") if name.strip()}


def generated_classes(target: str) -> tuple[LandCover, ...]:
    """The generator's classes a target label stands for (matched against their prompt synonyms).

    Raises
    ------
    ValueError
        When no generated class has that name.
    """
    wanted = _names(target)
    found = tuple(c for c, prompt in LAND_COVER_PROMPTS.items() if wanted & (_names(prompt) | {c.label}))
    if not found:
        known = "; ".join(LAND_COVER_PROMPTS.values())
        raise ValueError(f"target {target!r} names no class of the generated scene; its classes are: {known}")
    return found


def score_targets(
    flagged: NDArray[np.uint8],
    truth_before: NDArray[np.uint8],
    truth_after: NDArray[np.uint8],
    truth_change: NDArray[np.uint8],
    targets: Sequence[tuple[LandCover, ...]],
) -> list[tuple[BinaryConfusion, int]]:
    """Per-target confusion of one window: the cube's ``target_change`` against the generated truth.

    Parameters
    ----------
    flagged
        ``(T, rows, cols)`` ``target_change`` layer: 1 flagged, 0 not, 255 no data.
    truth_before, truth_after
        Generated class maps (:class:`LandCover` codes, 0 no data).
    truth_change
        Generated change types (0 unchanged, 255 no data).
    targets
        The generated classes of each of the ``T`` targets (see :func:`generated_classes`).

    Returns
    -------
    list of (BinaryConfusion, int)
        Per target, the confusion of the scored pixels and the number of truth pixels of that
        target left out because ``flagged`` has no data there.
    """
    if flagged.shape != (len(targets), *truth_change.shape):
        raise ValueError(
            f"target_change {flagged.shape} does not hold {len(targets)} targets over the truth's "
            f"{truth_change.shape} pixels"
        )
    truth_valid = (truth_change != 255) & (truth_before != 0) & (truth_after != 0)
    changed = truth_valid & (truth_change != 0)
    out: list[tuple[BinaryConfusion, int]] = []
    for layer, classes in zip(flagged, targets, strict=True):
        codes = np.array([int(c) for c in classes], dtype=np.uint8)
        truth = changed & (np.isin(truth_before, codes) | np.isin(truth_after, codes))
        scored = truth_valid & (layer != 255)
        confusion = BinaryConfusion()
        confusion.update(layer[scored] == 1, truth[scored])
        out.append((confusion, int(np.count_nonzero(truth & (layer == 255)))))
    return out


def _truth_blocks(
    truth_paths: tuple[Path, Path, Path], shape: tuple[int, int], step: int = 1024
) -> Iterator[tuple[Window, NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint8]]]:
    """The generated truth (class before, class after, change) window by window."""
    with (
        rasterio.open(truth_paths[0]) as before,
        rasterio.open(truth_paths[1]) as after,
        rasterio.open(truth_paths[2]) as change,
    ):
        for ds in (before, after, change):
            if (ds.height, ds.width) != shape:
                raise ValueError(f"truth {ds.name} {ds.shape} and change cube {shape} are not on one grid")
        for row in range(0, shape[0], step):
            for col in range(0, shape[1], step):
                window = Window(col, row, min(step, shape[1] - col), min(step, shape[0] - row))
                yield (
                    window,
                    before.read(1, window=window),
                    after.read(1, window=window),
                    change.read(1, window=window),
                )


def target_accuracy(change_cube: LocationLike, scene: GeneratedScene) -> tuple[TargetAccuracy, ...]:
    """Recall, precision and IoU of each target's change against the generated truth, block by block.

    Parameters
    ----------
    change_cube
        A change cube of the scene (its ``target`` labels must name generated classes).
    scene
        The generated scene with its truth rasters.

    Returns
    -------
    tuple of TargetAccuracy
        In the cube's ``target`` order.
    """
    store = Location.parse(change_cube).zarr_store(read_only=True)
    labels = [str(t) for t in np.asarray(zarr.open_array(store, path="target", mode="r")[:])]
    classes = [generated_classes(label) for label in labels]
    flagged = zarr.open_array(store, path="target_change", mode="r")
    totals = [[0, 0, 0, 0, 0] for _ in labels]  # tp, fp, fn, tn, unscored
    paths = (scene.truth_class_before, scene.truth_class_after, scene.truth_change)
    for window, before, after, change in _truth_blocks(paths, (flagged.shape[1], flagged.shape[2])):
        rows = slice(window.row_off, window.row_off + window.height)
        cols = slice(window.col_off, window.col_off + window.width)
        block = np.asarray(flagged[:, rows, cols])
        for total, (confusion, unscored) in zip(
            totals, score_targets(block, before, after, change, classes), strict=True
        ):
            for i, count in enumerate((confusion.tp, confusion.fp, confusion.fn, confusion.tn, unscored)):
                total[i] += count
    return tuple(
        TargetAccuracy(label, cls, binary_scores(*total[:4]), total[4])
        for label, cls, total in zip(labels, classes, totals, strict=True)
    )


def change_kind_recall(change_cube: LocationLike, scene: GeneratedScene) -> tuple[ChangeKindRecall, ...]:
    """Recall of the agnostic change map on each kind of generated change, block by block.

    Returns
    -------
    tuple of ChangeKindRecall
        One per :class:`~pipeline.synthetic.ChangeType` other than ``NONE``, in code order.
    """
    change = zarr.open_array(Location.parse(change_cube).zarr_store(read_only=True), path="change", mode="r")
    kinds = [k for k in ChangeType if k is not ChangeType.NONE]
    counts = np.zeros((len(kinds), 3), dtype=np.int64)  # truth, detected, unscored
    paths = (scene.truth_class_before, scene.truth_class_after, scene.truth_change)
    for window, _, _, truth in _truth_blocks(paths, (change.shape[0], change.shape[1])):
        predicted = np.asarray(
            change[
                window.row_off : window.row_off + window.height,
                window.col_off : window.col_off + window.width,
            ]
        )
        scored = predicted != 255
        for i, kind in enumerate(kinds):
            of_kind = truth == kind
            counts[i] += (
                np.count_nonzero(of_kind & scored),
                np.count_nonzero(of_kind & (predicted == 1)),
                np.count_nonzero(of_kind & ~scored),
            )
    return tuple(
        ChangeKindRecall(kind, int(t), int(d), int(u)) for kind, (t, d, u) in zip(kinds, counts, strict=True)
    )


def run_demo(
    workdir: Path, *, size: int = 1024, seed: int = 0, overwrite: bool = False, progress: bool = True
) -> DemoResult:
    """Generate (or reuse) a scene, serve it, and run the job on it end to end.

    Parameters
    ----------
    workdir
        Folder for the scene, the job file and the outputs.
    size
        Side of the generated scene in pixels.
    seed
        Seed of the scene.
    overwrite
        Regenerate the scene and recompute every output even when they exist.
    progress
        Show progress bars.
    """
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    spec = SceneSpec(size=size, seed=seed)
    # Outputs made from another scene (an earlier generator's, under the same item ids) are stale.
    fresh_scene = overwrite or not scene_is_current(spec, workdir / "scene")
    with staged_progress(enabled=progress) as report:
        if overwrite:
            scene = generate_scene(spec, workdir / "scene", report, overwrite=True)
        else:
            scene = ensure_scene(spec, workdir / "scene", report)
    output = workdir / "output"
    job_file = workdir / "job.yaml"
    job_file.write_text(
        yaml.safe_dump(demo_job_fields(scene, str(scene.items_path), output), sort_keys=False)
    )
    with serve_collection(scene.collection_path, scene.items_path, kind="rustac") as server:
        log.info("embedded STAC API at %s", server.url)
        job = JobSpec.build(**demo_job_fields(scene, server.url, output))
        result = run_job(job, force=fresh_scene, progress=progress)
    accuracy = change_accuracy(result.inference.path, scene.truth_change)
    targets = target_accuracy(result.inference.path, scene)
    kinds = change_kind_recall(result.inference.path, scene)
    return DemoResult(workdir, scene, job_file, result, accuracy, targets, kinds)
