"""A generated bi-temporal scene end to end, stage by stage: wall, model seconds, bytes, peak memory.

The scene is the demo's generator (``pipeline.synthetic``: 3 acquisitions per window with clouds,
6 bands, 10 m pixels, seed 0), generated once per size under ``--cache`` and reused. Each size
runs in its own child process (so its peaks are its own) through the same stage functions as
``seg2change run`` (:func:`pipeline.run.run_job`): preflight (the job's estimate), discover,
prepare (input cube made again from the scene's files), infer, publish, into a fresh output, with
the demo models on the job's default cluster.

Per stage it prints

* wall seconds, and wall per megapixel (the last table compares the sizes);
* model seconds (the engine's model-call seconds, infer only);
* CPU seconds of the process tree and ``busy`` = CPU seconds / (wall x cores): the share of the
  cores the stage kept busy (on a shared machine the other jobs' share is missing from it too);
* bytes read and written by the process tree (``/proc/<pid>/io`` rchar/wchar: page-cache hits
  included, so it is the traffic the stage asks for, not what reached the disk);
* peak RSS of the client (``VmHWM``, reset at each stage start via ``/proc/self/clear_refs``) and
  of each worker process (sampled with psutil every 0.2 s; with the default in-process worker the
  workers are threads of the client and share its figure);
* the load average at the stage's end;
* the client's RSS (``VmRSS``) at the stage's start and end: what a stage leaves for the next one.

Then the whole run's efficiency (model seconds / (whole wall x cores)), km^2/min, and the job's
memory estimate (:func:`pipeline.cost.estimate_job`: client + workers, model activations and
publishing included) against the measured peak.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/full_tile.py --sizes 2048 10980
    OMP_NUM_THREADS=1 .venv/bin/python bench/full_tile.py --sizes 2048 6144 --publish-only

``--publish-only`` times publishing alone (three times, best kept) on the change cube that a
whole run of that size left in the cache, to compare publish versions in the same minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path("/tmp/seg2change-bench-full-tile")


# --------------------------------------------------------------------------- measuring


def _vm_hwm() -> int:
    """This process's peak RSS (bytes) since the last reset."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _vm_rss() -> int:
    """This process's resident memory (bytes) now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_hwm() -> None:
    with suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


class TreeSampler:
    """Samples RSS and I/O counters of this process's children every ``interval`` seconds."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.me = psutil.Process()
        self.peak: dict[int, int] = {}
        self.io: dict[int, tuple[int, int]] = {}
        self.cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for proc in [self.me, *self.me.children(recursive=True)]:
            try:
                rss = proc.memory_info().rss
                io = proc.io_counters()
                times = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            with self._lock:
                self.peak[proc.pid] = max(self.peak.get(proc.pid, 0), rss)
                self.cpu[proc.pid] = times.user + times.system
                self.io[proc.pid] = (
                    getattr(io, "read_chars", io.read_bytes),
                    getattr(io, "write_chars", io.write_bytes),
                )

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def snapshot(self) -> tuple[dict[int, int], dict[int, tuple[int, int]], dict[int, float]]:
        """Sample now; return (peak RSS, io, CPU seconds) per pid, and reset the peaks."""
        self._sample()
        with self._lock:
            peaks, io, cpu = dict(self.peak), dict(self.io), dict(self.cpu)
            self.peak.clear()
        return peaks, io, cpu


@dataclass
class Stage:
    """The figures of one stage."""

    name: str
    wall: float = 0.0
    model_seconds: float | None = None
    cpu_seconds: float = 0.0
    read_bytes: int = 0
    written_bytes: int = 0
    client_peak: int = 0
    worker_peaks: list[int] = field(default_factory=list)
    load1: float = 0.0
    client_start: int = 0
    client_end: int = 0


class Recorder:
    """Times stages and attributes the process tree's I/O and peak memory to them."""

    def __init__(self) -> None:
        self.sampler = TreeSampler()
        self.stages: list[Stage] = []
        self.sampler.start()

    @contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        _, io_before, cpu_before = self.sampler.snapshot()
        _reset_hwm()
        record = Stage(name, client_start=_vm_rss())
        start = time.perf_counter()
        yield record
        record.wall = time.perf_counter() - start
        peaks, io_after, cpu_after = self.sampler.snapshot()
        record.cpu_seconds = sum(t - cpu_before.get(pid, 0.0) for pid, t in cpu_after.items())
        me = os.getpid()
        record.client_peak = max(_vm_hwm(), peaks.get(me, 0))
        record.client_end = _vm_rss()
        record.worker_peaks = sorted((v for pid, v in peaks.items() if pid != me), reverse=True)
        for pid, (r, w) in io_after.items():
            r0, w0 = io_before.get(pid, (0, 0))
            record.read_bytes += r - r0
            record.written_bytes += w - w0
        record.load1 = os.getloadavg()[0]
        self.stages.append(record)

    def close(self) -> None:
        self.sampler.stop()


# --------------------------------------------------------------------------- one size (child)


def _quiet() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("distributed", "pipeline", "prefect", "rasterio", "rio_cogeo"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _scene_and_job(size: int, cache: Path, block: int | None) -> tuple[Any, Any, Path]:
    from pipeline.demo import demo_job_fields
    from pipeline.spec import JobSpec
    from pipeline.synthetic import SceneSpec, ensure_scene

    folder = cache / f"scene-{size}"
    start = time.perf_counter()
    scene = ensure_scene(SceneSpec(size=size, seed=0), folder / "scene")
    print(
        f"  scene {size} px ready in {time.perf_counter() - start:.1f} s ({folder / 'scene'})",
        file=sys.stderr,
    )
    out = folder / "run"
    fields = demo_job_fields(scene, str(scene.items_path), out)
    if block is not None:
        fields["block_size"] = block
    fields["limits"] = {"allow_large": True}
    return scene, JobSpec.build(**fields), out


def run_one(size: int, cache: Path, block: int | None, publish_only: bool) -> dict[str, Any]:
    """Run one size end to end (or publish alone); return its figures as a dict."""
    _quiet()
    from pipeline.cube import prepare_cube
    from pipeline.discover import discover
    from pipeline.infer import run_inference
    from pipeline.preflight import preflight
    from pipeline.publish import publish
    from pipeline.stages import change_cube_path

    _, job, out = _scene_and_job(size, cache, block)
    recorder = Recorder()
    cores = len(os.sched_getaffinity(0))
    result: dict[str, Any] = {"size": size, "cores": cores, "area_km2": size * size * 1e-4}
    if publish_only:
        if not (out / "change_cube.zarr").exists():
            raise SystemExit(f"no change cube under {out}: run a whole run of size {size} first")
        found = discover(job)
        best: Stage | None = None
        for _ in range(3):
            with recorder.stage("publish") as record:
                publish(job, out / "change_cube.zarr", out / "input_cube.zarr", found, out, progress=False)
            best = record if best is None or record.wall < best.wall else best
        recorder.close()
        assert best is not None
        result["stages"] = [asdict(best)]
        return result
    shutil.rmtree(out, ignore_errors=True)
    with recorder.stage("preflight") as record:
        checked = preflight(job, inference=True)
    estimate = checked.estimate
    with recorder.stage("discover") as record:
        found = discover(job)
    with recorder.stage("prepare") as record:
        cube = prepare_cube(job, found, progress=False, reuse=True)
    with recorder.stage("infer") as record:
        inference = run_inference(job, cube.path, change_cube_path(job), progress=False)
        record.model_seconds = inference.model_seconds
    with recorder.stage("publish") as record:
        publish(job, inference.path, cube.path, found, out, progress=False)
    recorder.close()
    workers, threads = job.cluster.local_layout(cores)
    result.update(
        stages=[asdict(s) for s in recorder.stages],
        model_seconds=inference.model_seconds,
        estimate={
            "client_bytes": estimate.client_bytes,
            "worker_bytes": estimate.worker_bytes,
            "activation_bytes": estimate.activation_bytes,
            "publish_bytes": estimate.publish_bytes,
            "publish_area_bytes": estimate.publish_area_bytes,
            "in_process_bytes": estimate.in_process_bytes(workers),
            "workers": workers,
            "threads": threads,
            "processes": bool(job.cluster.processes),
            "block_size": estimate.block_size,
            "describe": estimate.describe(),
        },
    )
    return result


# --------------------------------------------------------------------------- report (parent)


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f}"


def _header() -> str:
    import torch

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"# full-tile bench: {platform.node()} {platform.machine()} python {platform.python_version()} "
        f"torch {torch.__version__}, {len(os.sched_getaffinity(0))} cores, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load {load}"
    )


def _stage_cpu(res: dict[str, Any], name: str) -> float:
    return float(sum(s["cpu_seconds"] for s in res["stages"] if s["name"] == name))


def report(results: list[dict[str, Any]]) -> None:
    """Print the per-stage tables, the whole-run figures and the size comparison."""
    for res in results:
        size, mpx = res["size"], res["size"] ** 2 / 1e6
        print(f"\n## {size} x {size} px ({res['area_km2']:.1f} km^2, {mpx:.1f} Mpx), {res['cores']} cores")
        print(
            f"{'stage':>10} {'wall s':>8} {'s/Mpx':>7} {'model s':>8} {'cpu s':>7} {'busy':>5} {'read MB':>9} {'written MB':>10} "
            f"{'client MB':>10} {'workers MB':>12} {'load1':>6} {'start MB':>9} {'end MB':>7}"
        )
        for s in res["stages"]:
            workers = ",".join(_mb(w) for w in s["worker_peaks"][:4]) or "in-proc"
            model = f"{s['model_seconds']:.1f}" if s["model_seconds"] is not None else "-"
            print(
                f"{s['name']:>10} {s['wall']:>8.1f} {s['wall'] / mpx:>7.3f} {model:>8} {s['cpu_seconds']:>7.1f} "
                f"{s['cpu_seconds'] / max(s['wall'] * res['cores'], 1e-9):>5.2f} {_mb(s['read_bytes']):>9} "
                f"{_mb(s['written_bytes']):>10} {_mb(s['client_peak']):>10} {workers:>12} {s['load1']:>6.2f} "
                f"{_mb(s.get('client_start', 0)):>9} {_mb(s.get('client_end', 0)):>7}"
            )
        if "model_seconds" not in res:
            continue
        whole = sum(s["wall"] for s in res["stages"])
        cores = res["cores"]
        eff = res["model_seconds"] / (whole * cores)
        print(
            f"whole run {whole:.1f} s; model {res['model_seconds']:.1f} s; efficiency model/(wall x {cores} cores) "
            f"{eff:.3f}; {res['area_km2'] / whole * 60:,.1f} km^2/min; {whole / mpx:.3f} s/Mpx"
        )
        cpu = sum(s["cpu_seconds"] for s in res["stages"])
        print(
            f"ceiling: model s / all CPU s of the run = {res['model_seconds'] / cpu:.3f} (the efficiency if every "
            f"stage overlapped the others with no idle core and no contention; non-model CPU "
            f"{cpu - res['model_seconds']:.1f} s, prepare {_stage_cpu(res, 'prepare'):.1f} s)"
        )
        est = res["estimate"]
        client_peak = max(s["client_peak"] for s in res["stages"])
        worker_peak = max((w for s in res["stages"] for w in s["worker_peaks"]), default=0)
        if est["processes"]:
            predicted, measured = est["client_bytes"], client_peak
            print(
                f"estimate: client {_mb(predicted)} MB vs measured {_mb(measured)} MB "
                f"({measured / predicted:.2f}x); worker {_mb(est['worker_bytes'])} MB (besides model weights) "
                f"vs measured {_mb(worker_peak)} MB ({worker_peak / est['worker_bytes']:.2f}x)"
            )
        else:
            predicted = est["in_process_bytes"]
            print(
                f"estimate (in-process worker, {est['threads']} threads): client "
                f"{_mb(est['client_bytes'] - est['publish_bytes'])} MB + the larger of publishing "
                f"{_mb(est['publish_bytes'])} MB (area part {_mb(est['publish_area_bytes'])} MB) and the worker "
                f"{_mb(est['worker_bytes'])} MB (activations {_mb(est['activation_bytes'])} MB) "
                f"= {_mb(predicted)} MB vs measured client peak "
                f"{_mb(client_peak)} MB ({client_peak / predicted:.2f}x)"
            )
        print(f"job: {est['describe']}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 10980], help="scene sides, px (10 m)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="scenes and outputs (kept)")
    parser.add_argument("--block-size", type=int, default=None, help="default: the demo job's")
    parser.add_argument(
        "--publish-only", action="store_true", help="time publish alone on the cached outputs"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.cache, args.block_size, args.publish_only)))
        return
    print(_header(), flush=True)
    results = []
    for size in args.sizes:
        command = [sys.executable, __file__, "--one", str(size), "--cache", str(args.cache)]
        if args.block_size is not None:
            command += ["--block-size", str(args.block_size)]
        if args.publish_only:
            command.append("--publish-only")
        done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        report(results[-1:])
    full = [r for r in results if "model_seconds" in r]
    if len(full) > 1:
        _compare(full[0], full[-1])
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


def _compare(small: dict[str, Any], big: dict[str, Any]) -> None:
    """Wall per megapixel and peak memory of each stage at two sizes."""
    print(f"\n## {small['size']} px vs {big['size']} px: wall per Mpx and peaks (ratio big / small)")
    print(
        f"{'stage':>10} {'s/Mpx small':>12} {'s/Mpx big':>10} {'ratio':>6} {'peak small':>11} {'peak big':>9} {'ratio':>6}"
    )
    mpx_s, mpx_b = small["size"] ** 2 / 1e6, big["size"] ** 2 / 1e6
    for a, b in zip(small["stages"], big["stages"], strict=True):
        ra, rb = a["wall"] / mpx_s, b["wall"] / mpx_b
        pa = max([a["client_peak"], *a["worker_peaks"]])
        pb = max([b["client_peak"], *b["worker_peaks"]])
        print(
            f"{a['name']:>10} {ra:>12.3f} {rb:>10.3f} {rb / ra:>6.2f} {_mb(pa):>11} {_mb(pb):>9} {pb / pa:>6.2f}"
        )


if __name__ == "__main__":
    main()
