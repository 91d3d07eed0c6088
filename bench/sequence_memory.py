"""Peak memory of a sequence run against its number of periods (issue 20: 3 vs 12 periods <= 1.1x).

A generated sequence (:func:`pipeline.synthetic.sequence.generate_sequence`: ``--size`` px, seed 0,
20 % clouds, events at known periods) is made once with the largest period count under ``--cache``
and reused; a run of ``P`` periods takes its first ``P`` windows. Each count runs in its own child
process (so its peaks are its own) through :func:`pipeline.sequence.run_sequence` into a fresh
output, with the demo models (demo CACH + spectral segmenter) and the base job's default cluster
(``--processes``: worker processes instead of the default in-process worker).

Per count it prints the wall seconds, the peak RSS of the client (``VmHWM``) and of each worker
process (sampled with psutil every 0.2 s; with the default in-process worker the workers are
threads of the client and share its figure), the client's RSS when each pair starts (how much each
pair leaves behind), and at the end the ratio of the largest count's peaks to the smallest's.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/sequence_memory.py --periods 3 12 --size 512
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
from datetime import date
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path("/tmp/seg2change-bench-sequence-memory")


def _status(field: str) -> int:
    """A memory figure of this process from ``/proc/self/status`` (``VmHWM``, ``VmRSS``), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


class ChildPeaks:
    """Samples the RSS of this process's children (worker processes) every ``interval`` seconds."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak: dict[int, int] = {}
        self._me = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for proc in self._me.children(recursive=True):
                try:
                    rss = proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                self.peak[proc.pid] = max(self.peak.get(proc.pid, 0), rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> ChildPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _scene(size: int, periods: int, cache: Path) -> Any:
    """The generated sequence of ``periods`` periods, made under ``cache`` the first time."""
    from pipeline.synthetic import SceneSpec
    from pipeline.synthetic.sequence import (
        GeneratedSequence,
        generate_sequence,
        period_windows,
        sequence_truth,
    )

    folder = (cache / f"scene-{size}-{periods}").resolve()
    ready = cache / f"scene-{size}-{periods}.ready"
    spec = SceneSpec(size=size, seed=0, cloud_fraction=0.2)
    if ready.exists():  # generate_sequence's defaults: periods of 30 days from 2024-01-01
        windows = tuple(period_windows(date(2024, 1, 1), periods, 30))
        return GeneratedSequence(
            spec, folder, folder / "items.ndjson", windows, sequence_truth(spec, periods)
        )
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    scene = generate_sequence(spec, folder, periods=periods)
    ready.write_text("")
    print(
        f"  scene {size} px x {periods} periods made in {time.perf_counter() - start:.1f} s", file=sys.stderr
    )
    return scene


def run_child(size: int, periods: int, scene_periods: int, cache: Path, processes: bool) -> dict[str, Any]:
    """Run a sequence of ``periods`` periods in this process; return its figures."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("distributed", "pipeline", "rasterio"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from pipeline.demo import demo_checkpoint, demo_sequence_fields
    from pipeline.sequence import SequenceSpec, run_sequence

    scene = _scene(size, scene_periods, cache)
    out = cache / f"run-{size}-{periods}"
    shutil.rmtree(out, ignore_errors=True)
    checkpoint = demo_checkpoint()
    base: dict[str, Any] = {**demo_sequence_fields(scene), "cluster": {"processes": processes}}
    if checkpoint is None:
        base["models"] = {"change_model": "cva", "segmenter": "spectral"}
    windows = [scene.window_interval(p) for p in range(1, periods + 1)]
    spec = SequenceSpec.build(base=base, output=str(out), windows=windows)
    at_pair: list[int] = []
    start = time.perf_counter()
    with ChildPeaks() as workers:
        run_sequence(spec, progress=False, on_pair=lambda k, run: at_pair.append(_status("VmRSS")))
    return {
        "periods": periods,
        "wall": time.perf_counter() - start,
        "client_peak": _status("VmHWM"),
        "client_end": _status("VmRSS"),
        "worker_peaks": sorted(workers.peak.values(), reverse=True),
        "rss_at_pair": at_pair,
    }


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--periods", type=int, nargs="+", default=[3, 12])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--processes", action="store_true", help="local workers as processes")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--scene-periods", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        figures = run_child(args.size, args.child, args.scene_periods, args.cache, args.processes)
        print(json.dumps(figures))
        return
    import torch

    cores = len(os.sched_getaffinity(0))
    print(f"# {platform.platform()}, {cores} cores, torch {torch.__version__}, load {os.getloadavg()[0]:.1f}")
    scene_periods = max(args.periods)
    args.cache.mkdir(parents=True, exist_ok=True)
    _scene(args.size, scene_periods, args.cache)  # made once, before any count is measured
    results = []
    for periods in args.periods:
        command = [sys.executable, __file__, "--child", str(periods), "--scene-periods", str(scene_periods)]
        command += ["--size", str(args.size), "--cache", str(args.cache)]
        command += ["--processes"] if args.processes else []
        done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(figures)
        workers = ", ".join(_mib(p) for p in figures["worker_peaks"]) or "in-process"
        print(
            f"periods {periods:3d}  pairs {periods - 1:3d}  wall {figures['wall']:7.1f} s  "
            f"client peak {_mib(figures['client_peak'])} MiB  workers {workers} MiB  "
            f"load {os.getloadavg()[0]:.1f}"
        )
        print(f"    client RSS at each pair start (MiB): {' '.join(_mib(r) for r in figures['rss_at_pair'])}")
    small, big = results[0], results[-1]
    print(
        f"client peak {big['periods']} vs {small['periods']} periods: "
        f"{big['client_peak'] / small['client_peak']:.2f}x"
    )
    if small["worker_peaks"] and big["worker_peaks"]:
        ratio = max(big["worker_peaks"]) / max(small["worker_peaks"])
        print(f"worker peak {big['periods']} vs {small['periods']} periods: {ratio:.2f}x")


if __name__ == "__main__":
    main()
