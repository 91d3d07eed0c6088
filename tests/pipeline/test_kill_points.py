"""A run SIGKILLed at any named step boundary is resumed by a rerun to the bytes of an uninterrupted run.

Each case runs the job in a child process with ``SEG2CHANGE_FAULT`` naming a kill point
(:mod:`pipeline.faults`): the child kills itself there with SIGKILL, no ``finally:`` runs. The
rerun, in this process, must finish without an error and leave exactly the bytes of a run that was
never interrupted, with no creation marker, lock, partial input cube or staging file left behind.

The engine cases (creation, each block, finalisation) run :func:`pipeline.infer.run_inference` on
a 128 px cube of four blocks; the whole-job cases (prepare blocks, publish) run
:func:`pipeline.run.run_job` on a 256 px synthetic scene (a partial input cube is resumed block
by block).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from engine_inputs import PROMPTS, engine_job, write_patch_cube

import pipeline.cube
import pipeline.infer
from pipeline.change_cube import BlockGrid, creation_marker, inspect_change_cube
from pipeline.cube import open_cube
from pipeline.demo import demo_checkpoint, demo_job_fields
from pipeline.engine_spec import ClusterSpec, ModelSpec, TilingSpec
from pipeline.faults import FAULT_POINTS, FAULT_VARIABLE
from pipeline.output_lock import LOCK_NAME
from pipeline.run import run_job
from pipeline.spec import JobSpec
from pipeline.synthetic import SceneSpec, generate_scene

SIZE, BLOCK = 128, 64
TILING = TilingSpec(tile_size=64, overlap=16, batch_size=4, block_size=BLOCK)
BLOCKS = len(BlockGrid(SIZE, SIZE, BLOCK))
#: The job recorded in the change cube: one for every run, wherever it writes.
JOB = engine_job("kill-test-output")


def cluster(torch_threads: int = 1) -> ClusterSpec:
    return ClusterSpec(n_workers=1, threads_per_worker=1, processes=False, torch_threads=torch_threads)


def models() -> ModelSpec:
    checkpoint = demo_checkpoint()
    assert checkpoint is not None, "the demo checkpoint ships with the package"
    return ModelSpec(checkpoint=str(checkpoint), segmenter="spectral")


def store_bytes(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` by its relative path."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def run_engine(
    cube: Path, out: Path, *, torch_threads: int = 1, force: bool = False
) -> pipeline.infer.InferenceResult:
    return pipeline.infer.run_inference(
        JOB,
        cube,
        out,
        models=models(),
        tiling=TILING,
        cluster=cluster(torch_threads),
        prompts=PROMPTS,
        force=force,
        progress=False,
    )


_ENGINE_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import test_kill_points
    test_kill_points.run_engine(
        Path(sys.argv[1]), Path(sys.argv[2]), torch_threads=int(sys.argv[3]), force=sys.argv[4:] == ["force"]
    )
    """
)


def killed_child(script: str, args: list[str], point: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with the kill point ``point`` set and check that it died there."""
    child = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, FAULT_VARIABLE: point, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"},
    )
    assert child.returncode == -signal.SIGKILL, f"not killed at {point}: {child.stderr[-3000:]}"
    return child


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_patch_cube(tmp_path_factory.mktemp("kill-cube") / "input_cube.zarr", SIZE, SIZE, chunk=BLOCK)


@pytest.fixture(scope="module")
def uninterrupted(cube: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("kill-reference") / "change_cube.zarr"
    result = run_engine(cube, out)
    assert len(result.computed) == BLOCKS
    return store_bytes(out)


ENGINE_POINTS = [
    "change-cube:creating",
    "change-cube:arrays-written",
    "change-cube:created",
    *(f"block:chunks-written@{n}" for n in (1, BLOCKS)),
    *(f"block:written@{n}" for n in range(1, BLOCKS + 1)),
    "finalise:start",
    "finalise:marked",
]


@pytest.mark.parametrize("point", ENGINE_POINTS)
def test_engine_killed_at_a_step_boundary_resumes_to_the_same_bytes(
    tmp_path: Path, cube: Path, uninterrupted: dict[str, bytes], point: str
) -> None:
    assert point.partition("@")[0] in FAULT_POINTS
    out = tmp_path / "change_cube.zarr"
    script = _ENGINE_CHILD.format(tests=str(Path(__file__).parent))
    killed_child(script, [str(cube), str(out), "1"], point)
    assert (tmp_path / LOCK_NAME).exists()  # the killed run's lock, recovered below

    rerun = run_engine(cube, out)
    assert store_bytes(out) == uninterrupted
    assert len(rerun.computed) + len(rerun.skipped) == BLOCKS
    if point.startswith("block:written@"):
        # The blocks marked done before the kill are not computed again.
        assert len(rerun.skipped) == int(point.partition("@")[2])
    assert not creation_marker(out).exists() and not (tmp_path / LOCK_NAME).exists()
    again = run_engine(cube, out)
    assert again.computed == () and store_bytes(out) == uninterrupted


def test_a_forced_run_killed_while_it_deletes_the_old_cube_is_resumed_without_force(
    tmp_path: Path, cube: Path, uninterrupted: dict[str, bytes]
) -> None:
    out = tmp_path / "change_cube.zarr"
    run_engine(cube, out)
    script = _ENGINE_CHILD.format(tests=str(Path(__file__).parent))
    killed_child(script, [str(cube), str(out), "1", "force"], "change-cube:removed")
    assert inspect_change_cube(out).creating
    rerun = run_engine(cube, out)
    assert len(rerun.computed) == BLOCKS and store_bytes(out) == uninterrupted


def test_a_cube_whose_creation_was_cut_short_without_a_marker_is_created_again(
    tmp_path: Path, cube: Path, uninterrupted: dict[str, bytes]
) -> None:
    """As an earlier version left it when killed while creating: no marker, arrays missing, no
    consolidated metadata (was: an ArrayNotFoundError traceback on every rerun)."""
    out = tmp_path / "change_cube.zarr"
    script = _ENGINE_CHILD.format(tests=str(Path(__file__).parent))
    killed_child(script, [str(cube), str(out), "1"], "change-cube:arrays-written")
    creation_marker(out).remove()
    shutil.rmtree(out / "block_done")
    shutil.rmtree(out / "transition")
    root = json.loads((out / "zarr.json").read_text())
    root.pop("consolidated_metadata", None)
    (out / "zarr.json").write_text(json.dumps(root))
    assert inspect_change_cube(out).creating
    run_engine(cube, out)
    assert store_bytes(out) == uninterrupted


def test_a_resume_on_another_thread_layout_gives_the_first_layouts_bytes(
    tmp_path: Path, cube: Path, uninterrupted: dict[str, bytes]
) -> None:
    """Torch's intra-op threads change the change model's sums in the last bits (the conv CACH by up
    to ~2e-6): the threads the cube was started with are recorded and used on every resume."""
    out = tmp_path / "change_cube.zarr"
    script = _ENGINE_CHILD.format(tests=str(Path(__file__).parent))
    killed_child(script, [str(cube), str(out), "1"], "block:written@2")
    assert json.loads(inspect_change_cube(out).attrs["torch_threads"]) == 1  # type: ignore[index]
    run_engine(cube, out, torch_threads=2)
    assert store_bytes(out) == uninterrupted


# --------------------------------------------------------------------------- whole jobs

_JOB_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from pipeline.run import run_job
    from pipeline.spec import JobSpec
    run_job(JobSpec.model_validate_json(Path(sys.argv[1]).read_text()), progress=False)
    """
)


def published_bytes(output: Path) -> dict[str, object]:
    """What a rerun into another folder must reproduce: both cubes and the COGs, byte for byte,
    except where the cubes' root metadata records the output folder and the search time (the STAC
    documents and statistics also record when they were made)."""
    found: dict[str, object] = {}
    for name in ("input_cube.zarr", "change_cube.zarr", "cogs"):
        for key, value in store_bytes(output / name).items():
            found[f"{name}/{key}"] = _without_run_fields(value) if key == "zarr.json" else value
    return found


def _without_run_fields(root_metadata: bytes) -> object:
    doc = json.loads(root_metadata)
    attributes = doc["attributes"]
    attributes.pop("provenance", None)
    if "job" in attributes:
        job = json.loads(attributes["job"])
        job.pop("output")
        attributes["job"] = job
    return doc


@pytest.fixture(scope="module")
def scene_job(tmp_path_factory: pytest.TempPathFactory) -> JobSpec:
    scene = generate_scene(SceneSpec(size=256, seed=3, block_size=256), tmp_path_factory.mktemp("kill-scene"))
    fields = demo_job_fields(scene, str(scene.items_path), Path("unused"))
    fields.update(block_size=128, cluster=cluster().model_dump(mode="json"))
    return JobSpec.build(**fields)


@pytest.fixture(scope="module")
def job_reference(scene_job: JobSpec, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    output = tmp_path_factory.mktemp("kill-job-reference") / "job"
    run_job(scene_job.model_copy(update={"output": str(output)}), progress=False)
    return published_bytes(output)


@pytest.mark.parametrize(
    "point", ["prepare:block-written@2", "prepare:written", "publish:start", "publish:done"]
)
def test_job_killed_while_preparing_or_publishing_resumes_to_the_same_bytes(
    tmp_path: Path,
    scene_job: JobSpec,
    job_reference: dict[str, object],
    point: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    output = tmp_path / "job"
    job = scene_job.model_copy(update={"output": str(output)})
    job_file = tmp_path / "job.json"
    job_file.write_text(job.model_dump_json())
    killed_child(_JOB_CHILD, [str(job_file)], point)
    if point.startswith("prepare"):
        assert list(output.glob(".input_cube.zarr.partial-*")), "the kill leaves a partial input cube"
    # What a kill while a COG was written leaves (pipeline.publish.cogs writes each COG's GeoTIFF there).
    (output / "cogs").mkdir(exist_ok=True)
    (output / "cogs" / ".change_probability.staging-0badc0de.tif").write_bytes(b"II*\x00 cut short")
    # And what a kill leaves of a file written aside and renamed into place (replace_atomically).
    (output / "cogs" / ".change.tif.tmp-0badc0de.tif").write_bytes(b"II*\x00 cut short")
    (output / ".statistics.json.tmp-0badc0de.json").write_text('{"cut": ')

    assembled: list[object] = []
    real_assemble = pipeline.cube._assemble

    def assemble(*args: Any) -> Any:
        assembled.append(args[2])
        return real_assemble(*args)

    monkeypatch.setattr(pipeline.cube, "_assemble", assemble)
    run_job(job, progress=False)
    assert published_bytes(output) == job_reference
    if point == "prepare:block-written@2":
        # The partial input cube is resumed: the whole (lazy) cube once, then the missing blocks.
        blocks = len(BlockGrid(*open_cube(output / "input_cube.zarr")["reflectance"].shape[2:], 128))
        assert len(assembled) == 1 + blocks - 2
    assert not list(output.glob(".input_cube.zarr.partial-*"))
    assert not list((output / "cogs").glob(".*.staging-*")) and not list((output / "cogs").glob(".*.tmp-*"))
    assert not list(output.glob(".*.tmp-*"))
    assert not (output / LOCK_NAME).exists()
