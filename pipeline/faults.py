"""Named kill points, for testing that a run killed at any step boundary can be resumed.

A run passes :func:`fault_point` at each step boundary (the change cube's creation, each block
written, finalisation, publishing, each input-cube block). Nothing happens unless the environment
variable :data:`FAULT_VARIABLE` names that point: then the process kills itself with ``SIGKILL``
at it, exactly as an operator's ``kill -9`` or the kernel's out-of-memory killer would, so no
``finally:`` and no ``atexit`` handler runs. The tests and ``bench/fault_injection.py`` set the
variable in a child process and check that a rerun gives the bytes of an uninterrupted run.

The variable holds ``point`` or ``point@n``: kill at the ``n``-th time (1-based, default 1) the
process passes ``point``. Examples: ``SEG2CHANGE_FAULT=change-cube:created``,
``SEG2CHANGE_FAULT=block:written@3``.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["FAULT_POINTS", "FAULT_VARIABLE", "fault_point"]

#: The environment variable that names the point to be killed at.
FAULT_VARIABLE = "SEG2CHANGE_FAULT"

#: Every point a run passes, in the order of a run, with what is on disk when it is killed there.
FAULT_POINTS: dict[str, str] = {
    "prepare:block-written": "an input-cube block is written into the partial input cube",
    "prepare:written": "every input-cube block is written, the cube not yet moved into place",
    "change-cube:removed": "an earlier change cube is deleted (force), its marker still there",
    "change-cube:creating": "the creation marker is written, the change cube not yet",
    "change-cube:arrays-written": "the change cube's arrays are written, the creation marker still there",
    "change-cube:created": "the change cube is created, no block written",
    "block:chunks-written": "a block's chunks are written, its completion marker not yet",
    "block:written": "a block and its completion marker are written",
    "finalise:start": "every block is done, the cube not yet marked complete",
    "finalise:marked": "the cube is marked complete, its metadata not yet consolidated again",
    "publish:start": "the change cube is complete, nothing published yet",
    "publish:done": "everything is published, the run not yet finished",
}

_lock = threading.Lock()
_passed: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Kill this process with SIGKILL here when :data:`FAULT_VARIABLE` names ``name`` (and its count).

    Parameters
    ----------
    name
        One of :data:`FAULT_POINTS`.
    """
    wanted = os.environ.get(FAULT_VARIABLE)
    if not wanted:
        return
    point, _, count = wanted.partition("@")
    if point != name:
        return
    with _lock:
        _passed[name] = _passed.get(name, 0) + 1
        hit = _passed[name] == (int(count) if count else 1)
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
