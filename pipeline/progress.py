"""Progress bars for long work, drawn with rich: one display for the project, and a staged one."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["make_progress", "staged_progress"]


def make_progress(*, enabled: bool = True) -> Progress:
    """Return the project's rich progress display (hidden when disabled or not on a terminal)."""
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=not sys.stderr.isatty(),
    )


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
