"""Progress bars for long work, drawn with rich.

:class:`DaskProgress` follows a dask computation on the local schedulers (threads, processes,
synchronous) through dask's callback hooks, since dask's own ``ProgressBar`` prints plain text
that does not sit well beside rich's log lines.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from dask.callbacks import Callback
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["DaskProgress", "make_progress", "staged_progress"]


def make_progress(*, enabled: bool = True) -> Progress:
    """Return the project's rich progress display (hidden when disabled or not on a terminal)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=not sys.stderr.isatty(),
    )


class DaskProgress(Callback):
    """Show a rich progress bar for the dask tasks computed inside the ``with`` block."""

    def __init__(self, description: str, *, enabled: bool = True) -> None:
        super().__init__()
        self._description = description
        self._progress = make_progress(enabled=enabled)
        self._task: Any = None

    def __enter__(self) -> DaskProgress:
        self._progress.start()
        super().__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc, tb)
        self._progress.stop()

    def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self._task = self._progress.add_task(self._description, total=total)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: dict[str, Any], worker_id: Any) -> None:
        if self._task is not None:
            self._progress.advance(self._task)


@contextmanager
def staged_progress(*, enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """Yield a ``progress(stage, done, total)`` callback that draws one bar per stage."""
    display = make_progress(enabled=enabled)
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = display.add_task(stage, total=total)
        display.update(tasks[stage], completed=done, total=total)

    with display:
        yield update
