"""Large buffers that leave no high-water mark in glibc's heaps (:mod:`pipeline.memory_release`)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)

#: A fresh interpreter frees a 30 MiB buffer (which lifts glibc's dynamic mmap threshold above
#: 20 MiB), then frees a 20 MiB buffer allocated before a thousand small objects, and prints how
#: many MiB of resident memory that last free gave back.
_PROBE = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import numpy as np

    def rss_mib():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024

    if sys.argv[1] == "map":
        from pipeline.memory_release import map_large_allocations
        assert map_large_allocations()
    first = np.ones(30 * 2**18, dtype=np.float32)
    del first
    buffer = np.ones(20 * 2**18, dtype=np.float32)
    pins = [bytes(64) for _ in range(1000)]
    before = rss_mib()
    del buffer
    print(before - rss_mib())
    """
)


def _mib_given_back(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, env=env, check=True, timeout=120
    )
    return int(done.stdout.strip().splitlines()[-1])


def test_a_freed_large_buffer_goes_back_to_the_system_once_large_allocations_are_mapped() -> None:
    assert _mib_given_back("map") >= 18


def test_without_it_glibc_keeps_the_freed_buffer_in_its_heap() -> None:
    # The behaviour map_large_allocations exists for: if glibc ever stops keeping it, the call can go.
    assert _mib_given_back("default") <= 2
