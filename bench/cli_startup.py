"""Seconds for the ``seg2change`` command to print its help and to refuse a misspelt job.

Each case runs the installed ``seg2change`` in a fresh process ``--repeat`` times and prints the
best, median and worst wall time, with the 1-minute load average beside it. The misspelt job has
``clod_limit`` for ``cloud_limit``; the command must exit with status 2 and name the key (checked,
the timing is only printed). The target is under 2 s on a loaded 2-core machine: the job is
validated before dask, torch and prefect are imported.

Usage::

    .venv/bin/python bench/cli_startup.py --repeat 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MISSPELT_JOB = """\
aoi:
  bbox: [13.30, 52.45, 13.45, 52.55]
  crs: EPSG:4326
before: 2024-05-01/2024-05-31
after: 2024-07-01/2024-07-31
catalog: https://stac.example.org/v1
collections: [sentinel-2-l2a]
clod_limit: 30
output: {output}
prompts: {{classes: [water, vegetation], targets: [water]}}
models: {{segmenter: spectral}}
"""


def _time(command: list[str], expect_code: int, expect_text: str | None) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - start
    if done.returncode != expect_code or (expect_text and expect_text not in done.stdout + done.stderr):
        raise SystemExit(
            f"{' '.join(command)} exited {done.returncode} (expected {expect_code}):\n{done.stdout}{done.stderr}"
        )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per case (default 5)")
    args = parser.parse_args()
    seg2change = str(Path(sys.executable).with_name("seg2change"))
    print(f"# {platform.platform()}, {os.cpu_count()} cores, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job.yaml"
        job.write_text(MISSPELT_JOB.format(output=Path(tmp) / "out"))
        cases = {
            "seg2change --help": ([seg2change, "--help"], 0, "Usage"),
            "run with a misspelt key (refused)": ([seg2change, "run", str(job)], 2, "clod_limit"),
            "prepare with a misspelt key (refused)": ([seg2change, "prepare", str(job)], 2, "clod_limit"),
        }
        print(f"{'case':<40} {'best s':>7} {'median s':>9} {'worst s':>8}  load(1 min)")
        for label, (command, code, text) in cases.items():
            times = [_time(command, code, text) for _ in range(args.repeat)]
            print(
                f"{label:<40} {min(times):>7.2f} {statistics.median(times):>9.2f} {max(times):>8.2f}"
                f"  {os.getloadavg()[0]:.1f}"
            )


if __name__ == "__main__":
    main()
