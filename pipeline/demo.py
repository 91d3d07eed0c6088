"""The embedded default job: a generated scene, served by an embedded STAC API, prepared locally.

``seg2change demo`` runs this. It needs nothing but the project: the scene is generated (and
reused on the next run when its parameters are the same), the STAC API is started on 127.0.0.1
and stopped afterwards, and the job it runs is written to ``job.yaml`` beside the outputs, pointing
at the scene's static catalog so that it can be run again without any server.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.cube import PreparedCube, cube_path, describe_cube, prepare_cube
from pipeline.discover import Discovery, discover
from pipeline.errors import OutputExistsError
from pipeline.progress import staged_progress
from pipeline.spec import JobSpec
from pipeline.stac_servers import serve_collection
from pipeline.synthetic import GeneratedScene, SceneSpec, ensure_scene, generate_scene

__all__ = ["DemoResult", "demo_job_fields", "run_demo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoResult:
    """What the demo produced and where."""

    workdir: Path
    scene: GeneratedScene
    job_file: Path
    discovery: Discovery
    cube: PreparedCube
    reused_cube: bool


def demo_job_fields(scene: GeneratedScene, catalog: str, output: Path) -> dict[str, Any]:
    """Return the job fields that analyse a generated scene from a given catalog."""
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
    }


def run_demo(
    workdir: Path, *, size: int = 1024, seed: int = 0, overwrite: bool = False, progress: bool = True
) -> DemoResult:
    """Generate (or reuse) a scene, serve it, discover it and prepare its cube.

    Parameters
    ----------
    workdir
        Folder for the scene, the job file and the outputs.
    size
        Side of the generated scene in pixels.
    seed
        Seed of the scene.
    overwrite
        Regenerate the scene and recompute the outputs even when they exist.
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
        job = JobSpec.build(**demo_job_fields(scene, server.url, output), overwrite=overwrite)
        found = discover(job)
    reused = False
    try:
        cube = prepare_cube(job, found, progress=progress)
    except OutputExistsError:
        log.info("the cube exists already; pass --overwrite to compute it again")
        cube = describe_cube(cube_path(job), found)
        reused = True
    return DemoResult(workdir, scene, job_file, found, cube, reused)
