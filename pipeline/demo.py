"""The embedded default job: a generated scene, served by an embedded STAC API, run end to end locally.

``seg2change demo`` runs this. It needs nothing but the project: the scene is generated (and
reused on the next run when its parameters are the same), the STAC API is started on 127.0.0.1
and stopped afterwards, the models are the demo checkpoint shipped in the package (a small CACH
trained on other generated scenes) and the spectral segmenter, and the compute runs on a local
Dask cluster. The job it runs is written to ``job.yaml`` beside the outputs, pointing at the
scene's items file so that it can be run again with ``seg2change run`` without any server.
Because the scene is generated, the change map's accuracy against the truth is reported too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import yaml
import zarr
from rasterio.windows import Window

from pipeline.progress import staged_progress
from pipeline.run import RunResult, run_job
from pipeline.spec import JobSpec
from pipeline.stac_servers import serve_collection
from pipeline.storage import Location, LocationLike
from pipeline.synthetic import LAND_COVER_PROMPTS, GeneratedScene, SceneSpec, ensure_scene, generate_scene
from seg2change_core.metrics import BinaryConfusion, BinaryScores

__all__ = ["DEMO_PROMPTS", "DemoResult", "change_accuracy", "demo_checkpoint", "demo_job_fields", "run_demo"]

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


def demo_checkpoint() -> Path | None:
    """Return the demo CACH checkpoint shipped in the package, or None when it is absent."""
    path = Path(str(resources.files("seg2change_core") / "assets" / "demo_cach.safetensors"))
    return path if path.is_file() else None


def demo_job_fields(scene: GeneratedScene, catalog: str, output: Path) -> dict[str, Any]:
    """Return the job fields that analyse a generated scene from a given catalog."""
    checkpoint = demo_checkpoint()
    return {
        "aoi": {"bbox": list(scene.bbox_utm), "crs": f"EPSG:{scene.spec.epsg}"},
        "before": f"{scene.before_window[0].isoformat()}/{scene.before_window[1].isoformat()}",
        "after": f"{scene.after_window[0].isoformat()}/{scene.after_window[1].isoformat()}",
        "catalog": catalog,
        "collections": [scene.spec.collection_id],
        "bands": ["blue", "green", "red", "nir", "swir16", "swir22"],
        "quality": "synthetic",
        "grid": {"crs": f"EPSG:{scene.spec.epsg}", "resolution": scene.spec.resolution},
        "cloud_limit": 90,
        "output": str(output),
        "block_size": 512,
        "prompts": DEMO_PROMPTS,
        "models": {"checkpoint": str(checkpoint) if checkpoint else None, "segmenter": "spectral"},
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
        result = run_job(job, force=overwrite, progress=progress)
    accuracy = change_accuracy(result.inference.path, scene.truth_change)
    return DemoResult(workdir, scene, job_file, result, accuracy)
