"""Fault injection: kill the engine at every named step boundary, fight over an output's lock, lose
workers and the scheduler, and print a table of what happened.

Cases
-----
* **kill at a step boundary**: a child process runs the engine on a small cube with
  ``SEG2CHANGE_FAULT`` naming a kill point (:mod:`pipeline.faults`) and dies there by SIGKILL;
  this process reruns the same job. Outcome: whether the rerun ended without an error, how many
  blocks it computed again, and whether the change cube has the bytes of an uninterrupted run.
* **lock**: a live process of this host holds the output's lock (refused, holder named), the same
  after that process died (recovered), another host's lock with an expired lease (recovered).
* **cluster**: one of two workers lost during the run (survived, same bytes), every worker lost
  (a clear error after ``WORKERLESS_SECONDS``), the scheduler lost (a clear error).

The model is the demo CACH checkpoint with the spectral segmenter, as in the demo. Nothing is
timed for a claim; the seconds are printed to show how long each case took on this machine.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/fault_injection.py            # every case, ~3 min on 2 vCPU
    OMP_NUM_THREADS=1 .venv/bin/python bench/fault_injection.py --quick    # fewer kill points
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import psutil
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine
from distributed import Client, LocalCluster
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_efficiency import machine_header  # noqa: E402

import pipeline.block_submission  # noqa: E402
import pipeline.block_tasks  # noqa: E402
import pipeline.infer  # noqa: E402
import pipeline.output_lock  # noqa: E402
from pipeline.change_cube import BlockGrid  # noqa: E402
from pipeline.cube import write_cube  # noqa: E402
from pipeline.demo import demo_checkpoint  # noqa: E402
from pipeline.engine_spec import ClusterSpec, ModelSpec, PromptSpec, TilingSpec  # noqa: E402
from pipeline.errors import OutputLockedError  # noqa: E402
from pipeline.faults import FAULT_VARIABLE  # noqa: E402
from pipeline.output_lock import LOCK_NAME, hold_output  # noqa: E402
from pipeline.spec import JobSpec  # noqa: E402
from pipeline.storage import Location  # noqa: E402
from seg2change_core.errors import Seg2ChangeError  # noqa: E402

SIZE, BLOCK = 256, 64
TILING = TilingSpec(tile_size=64, overlap=16, batch_size=4, block_size=BLOCK)
BLOCKS = len(BlockGrid(SIZE, SIZE, BLOCK))
PROMPTS = PromptSpec.build(classes="water;forest;building", background="background", targets=("building",))
#: The job recorded in every change cube (the engine is given its input cube: no search is made).
JOB = JobSpec.build(
    aoi={"bbox": (400_000, 4_997_440, 402_560, 5_000_000), "crs": "EPSG:32633"},
    before="2023-06-01/2023-06-30",
    after="2024-06-01/2024-06-30",
    catalog="https://stac.example.com/v1",
    collections="sentinel-2-l2a",
    grid={"crs": "EPSG:32633"},
    output="fault-injection-output",
)
BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")
SPECTRA = np.array(
    [
        [0.06, 0.07, 0.05, 0.03, 0.01, 0.005],
        [0.03, 0.05, 0.03, 0.35, 0.17, 0.08],
        [0.16, 0.17, 0.18, 0.20, 0.26, 0.24],
    ],
    dtype=np.float32,
)


def make_cube(path: Path) -> Path:
    """A cube of 16 px class patches, about a fifth of them changed, with noise and a cloud."""
    rng = np.random.default_rng(0)
    before = rng.integers(0, 3, (SIZE // 16, SIZE // 16))
    after = np.where(rng.random(before.shape) < 0.2, (before + 1) % 3, before)
    classes = np.stack([np.kron(c, np.ones((16, 16), dtype=int)) for c in (before, after)])
    refl = SPECTRA[classes].transpose(0, 3, 1, 2) + rng.normal(0, 0.005, (2, len(BANDS), SIZE, SIZE))
    refl = refl.astype(np.float32)
    refl[1, :, 40:70, 100:150] = np.nan
    ds = xr.Dataset(
        {
            "reflectance": (
                ("epoch", "band", "y", "x"),
                da.from_array(refl, chunks=(1, len(BANDS), BLOCK, BLOCK)),
            )
        },
        coords={
            "epoch": np.array(["before", "after"], dtype="U6"),
            "band": np.array(BANDS, dtype="U"),
            "y": 5_000_000.0 - 10 * np.arange(SIZE) - 5,
            "x": 400_000.0 + 10 * np.arange(SIZE) + 5,
        },
    )
    ds = ds.rio.write_crs("EPSG:32633").rio.write_transform(Affine(10, 0, 400_000, 0, -10, 5_000_000))
    with dask.config.set(scheduler="threads"):
        return Path(write_cube(ds, path, progress=False))


_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, {bench!r})
    import fault_injection
    fault_injection.run_engine(Path(sys.argv[1]), Path(sys.argv[2]))
    """
)


def models() -> ModelSpec:
    checkpoint = demo_checkpoint()
    return ModelSpec(checkpoint=None if checkpoint is None else str(checkpoint), segmenter="spectral")


def run_engine(
    cube: Path, out: Path, cluster: ClusterSpec | Client | None = None
) -> pipeline.infer.InferenceResult:
    """The engine run every case repeats (one in-process worker, one thread, unless a client is given)."""
    return pipeline.infer.run_inference(
        JOB,
        cube,
        out,
        models=models(),
        tiling=TILING,
        cluster=cluster or ClusterSpec(n_workers=1, threads_per_worker=1, processes=False, torch_threads=1),
        prompts=PROMPTS,
        progress=False,
    )


def store_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def kill_case(cube: Path, folder: Path, point: str, reference: dict[str, bytes]) -> list[str]:
    out = folder / "change_cube.zarr"
    started = time.perf_counter()
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD.format(bench=str(Path(__file__).resolve().parent)),
            str(cube),
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, FAULT_VARIABLE: point, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"},
    )
    killed = "SIGKILL" if child.returncode == -signal.SIGKILL else f"exit {child.returncode}"
    try:
        result = run_engine(cube, out)
        rerun = f"ok, {len(result.computed)} of {BLOCKS} blocks recomputed"
        same = "yes" if store_bytes(out) == reference else "NO"
    except Seg2ChangeError as exc:
        rerun, same = f"{type(exc).__name__}: {exc}"[:90], "NO"
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    return [
        f"kill at {point}",
        killed,
        rerun,
        same,
        ", ".join(leftovers) or "none",
        f"{time.perf_counter() - started:.1f}",
    ]


def lock_cases(folder: Path) -> list[list[str]]:
    rows = []
    output = Location(str(folder))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    def foreign(pid: int, host: str, expires_in: float, started: float) -> None:
        now = time.time()
        boot = pipeline.output_lock._boot_id() if host == socket.gethostname() else ""
        doc = {
            "host": host,
            "boot": boot,
            "pid": pid,
            "started": started,
            "job": "job /data/berlin",
            "run": "feedc0de" * 4,
            "acquired": now - 30,
            "expires": now + expires_in,
        }
        (output / LOCK_NAME).write_text(json.dumps(doc))

    def attempt(label: str) -> None:
        start = time.perf_counter()
        try:
            with hold_output(output, job="bench"):
                outcome = "taken (stale lock recovered)"
        except OutputLockedError as exc:
            outcome = f"refused, naming {str(exc).partition(' is being written by ')[2].partition(';')[0]}"
        rows.append([label, "-", outcome, "-", "-", f"{time.perf_counter() - start:.2f}"])

    try:
        foreign(holder.pid, socket.gethostname(), 600, psutil.Process(holder.pid).create_time())
        attempt("lock held by a live process on this host")
        holder.kill()
        holder.wait()
        attempt("lock of a process that died on this host")
        foreign(4242, "worker-7.example", 600, 0.0)
        attempt("lock of another host, lease valid")
        foreign(4242, "worker-7.example", -5, 0.0)
        attempt("lock of another host, lease expired")
    finally:
        holder.kill()
    return rows


def cluster_case(
    cube: Path, folder: Path, label: str, n_workers: int, fault: Callable[[LocalCluster, Client], None],
    reference: dict[str, bytes],
) -> list[str]:  # fmt: skip
    out = folder / "change_cube.zarr"
    real = getattr(pipeline.block_tasks, "write_block")  # noqa: B009
    fired = threading.Event()
    started = time.perf_counter()
    with (
        dask.config.set({"distributed.comm.timeouts.connect": "3s"}),
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=False,
            dashboard_address=None,
            worker_dashboard_address=None,
        ) as cluster,  # fmt: skip
        Client(cluster, timeout=3) as client,
    ):

        def write_block(*args: Any) -> None:
            real(*args)
            if not fired.is_set():
                fired.set()
                threading.Thread(target=fault, args=(cluster, client), daemon=True).start()
                time.sleep(0.5)

        setattr(pipeline.block_tasks, "write_block", write_block)  # noqa: B010
        try:
            result = run_engine(cube, out, client)
            outcome = f"ok, {len(result.computed)} blocks"
            same = "yes" if store_bytes(out) == reference else "NO"
        except Seg2ChangeError as exc:
            outcome, same = f"{type(exc).__name__}: {str(exc)[:80]}…", "-"
        finally:
            setattr(pipeline.block_tasks, "write_block", real)  # noqa: B010
    return [label, "-", outcome, same, "-", f"{time.perf_counter() - started:.1f}"]


def _close_scheduler(cluster: LocalCluster, client: Client) -> None:
    scheduler = cluster.scheduler
    assert scheduler is not None
    client.sync(scheduler.close)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="kill at fewer points")
    parser.add_argument(
        "--workerless", type=float, default=5.0, help="seconds without workers before giving up"
    )
    args = parser.parse_args()
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(machine_header("fault injection"), markup=False, highlight=False)
    points = [
        "change-cube:creating",
        "change-cube:arrays-written",
        "change-cube:created",
        "block:chunks-written@1",
    ]
    points += [
        f"block:written@{n}" for n in ((1, BLOCKS // 2, BLOCKS) if args.quick else range(1, BLOCKS + 1))
    ]
    points += ["finalise:start", "finalise:marked"]
    pipeline.block_submission.WORKERLESS_SECONDS = args.workerless
    with tempfile.TemporaryDirectory(prefix="seg2change-faults-") as tmp:
        root = Path(tmp)
        cube = make_cube(root / "input_cube.zarr")
        run_engine(cube, root / "reference" / "change_cube.zarr")
        reference = store_bytes(root / "reference" / "change_cube.zarr")
        table = Table(title=f"fault injection ({SIZE} px cube, {BLOCKS} blocks of {BLOCK} px)")
        for column in ("case", "child", "rerun / outcome", "same bytes", "left in output", "s"):
            table.add_column(column, overflow="fold")
        rows = [kill_case(cube, root / f"kill-{i}", p, reference) for i, p in enumerate(points)]
        rows += lock_cases(root / "lock")
        faults: list[tuple[str, str, int, Callable[[LocalCluster, Client], None]]] = [
            ("one-worker", "one of two workers lost", 2, lambda cluster, _: cluster.scale(1)),
            ("all-workers", "every worker lost", 1, lambda cluster, _: cluster.scale(0)),
            ("scheduler", "scheduler lost", 1, _close_scheduler),
        ]
        for folder, label, workers, fault in faults:
            rows.append(cluster_case(cube, root / folder, label, workers, fault, reference))
        for row in rows:
            table.add_row(*row)
        console.print(table)


if __name__ == "__main__":
    main()
