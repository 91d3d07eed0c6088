"""The ``seg2change sequence`` command: a job over N >= 2 windows, pair by pair, into a sequence cube.

A plain function with typer annotations; :mod:`flows.cli` registers it on the app. The sequence
file is read and checked before Dask, Zarr or the models load, so a bad file is refused at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.commands_model import _fail, console, out_console
from seg2change_core.errors import Seg2ChangeError

__all__ = ["sequence"]


def sequence(
    sequence_file: Annotated[
        Path, typer.Argument(help="Sequence YAML: a job's fields with 'windows' instead of before/after.")
    ],
    output: Annotated[str | None, typer.Option(help="Output folder; replaces the file's 'output'.")] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace the sequence cube and recompute every pair, even finished ones."
        ),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run a sequence: each consecutive pair of windows as a two-date job, stacked into one cube.

    Pairs already in the sequence cube are skipped, so a stopped run resumes where it was. To
    append, add a window at the end of the file's 'windows' and run the same command again: only
    the new pair runs.
    """
    from pipeline.sequence.spec import SequenceSpec

    try:
        spec = SequenceSpec.from_yaml(sequence_file, output=output)
        from pipeline.sequence.cube import changed_pixels
        from pipeline.sequence.run import run_sequence

        def report(k: int, runs: bool) -> None:
            state = "running" if runs else "skipped (done)"
            console.print(f"pair {k}/{spec.pairs} {spec.pair_name(k)}: {state}")

        result = run_sequence(spec, force=overwrite, progress=progress, on_pair=report)
        counts = changed_pixels(result.cube)
    except Seg2ChangeError as exc:
        _fail(exc)
        return
    out_console.print(f"sequence cube: {result.cube}")
    out_console.print(f"pairs run now: {len(result.computed)} of {spec.pairs}")
    for k, count in enumerate(counts, start=1):
        out_console.print(f"  pair {k} {spec.pair_name(k)}: {count} changed pixels")
    if result.publication is not None:
        published = result.publication
        out_console.print(f"statistics over time: {published.statistics}")
        for layer, cog in published.cogs.items():
            out_console.print(f"  COG {layer}: {cog}")
        out_console.print(
            f"quick-looks: {published.quicklooks['strip']}, {published.quicklooks['animation']}"
        )
        out_console.print(f"STAC collection: {published.stac.collection}")
