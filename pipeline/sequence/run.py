"""Run a sequence: each consecutive pair of windows as a two-date job, then the sequence cube.

Pair ``k`` (windows ``k`` and ``k + 1``) runs through :func:`pipeline.run.run_job` into its own
output folder (``pairs/NNN_<start>_<start>/``), so every guarantee of a job holds for it: the
output lock, restart from finished blocks, byte-identical outputs. Its change cube is then stacked
into the sequence cube (:mod:`pipeline.sequence.cube`).

With a fixed reference window (``reference``), each window at least two away from it is also
compared with it, as a two-date job of its own under ``references/`` (input cut from the windows
cube too), after the consecutive pairs; a marker file (:data:`REFERENCE_DONE`) written once its
job has finished makes a later run (an append) skip it.

Appending: running a sequence whose cube already holds pairs ``1..m`` of the same base job and
windows (a prefix of the requested windows) runs only the pairs after ``m`` and extends the cube;
the result equals a run of the whole sequence at once, byte for byte.

Each window's composite is computed once, into the windows cube (:mod:`pipeline.sequence.windows`),
before the pairs run; each pair's input cube is cut from it, so a pair's prepare stage finds its
input done. Appending a window computes its composite and the new pair only.

Worker processes and launched back-ends are started once for all the pairs (the given client,
else the base job's ``cluster``, started at the first pair to compute and closed at the end), so
each worker builds the models once and keeps them. The default in-process local cluster is started
per pair instead, as a lone job starts it: its models live in the process's model cache whatever
the cluster, and an in-process scheduler and worker kept for all the pairs grew with them (their
logs and computation history, bounded only by distributed's large limits). A job that fixes
``cluster.torch_threads`` also starts its cluster per pair: a pair given a ready client computes
with the cluster's own count.

After each pair, the memory it freed is handed back to the operating system, here and on every
worker (:func:`pipeline.memory_release.release_freed_memory`); without it, workers that live
through the pairs keep each pair's freed heap pages.

Peak memory against the number of periods: ``bench/sequence_memory.py`` (3 vs 12 periods at 512
px, 2 vCPU: in-process 1.09x, worker processes 1.05x; one in-process cluster for all the pairs
gave 1.22x with trimming and 1.39x without).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from distributed import Client

from pipeline.cluster import connect
from pipeline.layout import COGS, STAC
from pipeline.memory_release import release_freed_memory
from pipeline.output_lock import hold_output
from pipeline.run import RunResult, run_job
from pipeline.sequence.cube import SEQUENCE_CUBE, add_pair, pairs_done
from pipeline.sequence.publish import SequencePublication, publish_sequence
from pipeline.sequence.spec import PAIRS_DIR, REFERENCES_DIR, SequenceSpec
from pipeline.sequence.windows import (
    WINDOWS_CUBE,
    materialise_pair_input,
    materialise_reference_input,
    prepare_windows,
)
from pipeline.storage import Location

__all__ = ["REFERENCE_DONE", "SequenceResult", "run_sequence"]

#: Marker file in a reference pair's output, written once its job has finished.
REFERENCE_DONE = "reference.done"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SequenceResult:
    """What a sequence run did.

    Attributes
    ----------
    spec
        The sequence.
    cube
        The sequence cube.
    computed
        The pairs (1-based) run now; the others were done before.
    composited
        The windows (1-based) whose composite was computed now.
    references
        The windows (1-based) whose reference pair was run now.
    runs
        The result of each pair run now, in pair order.
    publication
        What the sequence's publishing wrote (statistics over time, COGs, quick-looks, STAC).
    """

    spec: SequenceSpec
    cube: Path
    computed: tuple[int, ...]
    runs: tuple[RunResult, ...]
    composited: tuple[int, ...] = ()
    references: tuple[int, ...] = ()
    publication: SequencePublication | None = None


def run_sequence(
    spec: SequenceSpec,
    *,
    force: bool = False,
    progress: bool = True,
    client: Client | None = None,
    on_pair: Callable[[int, bool], None] | None = None,
) -> SequenceResult:
    """Run the pairs of ``spec`` not yet in its sequence cube, and stack each into the cube.

    Parameters
    ----------
    spec
        The sequence.
    force
        Replace the sequence cube, the windows cube and the pairs' outputs, and recompute every
        composite and pair, even finished ones.
    progress
        Show progress bars.
    client
        A ready Dask client for every pair (left open); default: the base job's ``cluster``, started
        once for every pair when its workers are processes or launched, else per pair.
    on_pair
        Called with each pair (1-based) and whether it is run now (``False``: done before), before
        a pair runs.

    Returns
    -------
    SequenceResult

    Raises
    ------
    OutputExistsError
        The output holds a sequence cube of another base job or of windows that the requested ones
        do not extend at the end; nothing is changed.
    OutputLockedError
        Another live run writes the sequence.
    """
    root = Path(spec.output)
    root.mkdir(parents=True, exist_ok=True)
    cube = root / SEQUENCE_CUBE
    windows = spec.window_dates()
    computed: list[int] = []
    runs: list[RunResult] = []
    with hold_output(Location(str(root)), job=f"sequence {root}"), ExitStack() as cluster:
        if force:
            # STAC and COGs too: an Item or COG of a pair or target the new run lacks would stay.
            for made in (
                cube,
                root / WINDOWS_CUBE,
                root / PAIRS_DIR,
                root / REFERENCES_DIR,
                root / STAC,
                root / COGS,
            ):
                shutil.rmtree(made, ignore_errors=True)
        done = pairs_done(cube, windows, spec.base)
        todo = [w for w in spec.reference_windows() if not _reference_done(spec, w)]
        composited = prepare_windows(spec, progress=progress).computed if done < spec.pairs or todo else ()
        for k in range(1, spec.pairs + 1):
            if on_pair is not None:
                on_pair(k, k > done)
            if k <= done:
                continue
            log.info("sequence %s: pair %d of %d (%s)", root, k, spec.pairs, spec.pair_name(k))
            materialise_pair_input(spec, k, progress=progress)
            if client is None:
                client = _start_cluster(spec, cluster)
            result = run_job(spec.pair_job(k), progress=progress, client=client)
            add_pair(cube, k, result.inference.path.local_path, windows, spec.base)
            _release_freed_memory(client)
            computed.append(k)
            runs.append(result)
        _run_references(spec, todo, progress=progress, client=client, cluster=cluster)
        publication = publish_sequence(spec, cube)
    return SequenceResult(spec, cube, tuple(computed), tuple(runs), composited, tuple(todo), publication)


def _run_references(
    spec: SequenceSpec, windows: list[int], *, progress: bool, client: Client | None, cluster: ExitStack
) -> None:
    """Run each of ``windows`` against the sequence's reference window, marking each one done."""
    for w in windows:
        log.info("sequence %s: window %d against the reference window %s", spec.output, w, spec.reference)
        materialise_reference_input(spec, w, progress=progress)
        if client is None:
            client = _start_cluster(spec, cluster)
        run_job(spec.reference_job(w), progress=progress, client=client)
        (Path(spec.reference_job(w).output) / REFERENCE_DONE).write_text("")
        _release_freed_memory(client)


def _start_cluster(spec: SequenceSpec, stack: ExitStack) -> Client | None:
    """Start the base job's cluster for every pair, closed with ``stack``; ``None`` (each pair starts
    its own) for the in-process local cluster or when the job fixes ``cluster.torch_threads``."""
    job = spec.pair_job(1)
    cluster = job.cluster
    in_process = cluster.address is None and cluster.backend is None and not cluster.processes
    if in_process or cluster.torch_threads is not None:
        return None
    session = stack.enter_context(connect(job.cluster, gpu=job.models.device == "cuda"))
    log.info("sequence %s: one Dask cluster for every pair (%s)", spec.output, session.client)
    return session.client


def _release_freed_memory(client: Client | None) -> None:
    """Hand what a pair freed back to the operating system, in this process and on every worker."""
    release_freed_memory()
    if client is not None:
        client.run(release_freed_memory, on_error="ignore")  # a worker lost now fails the next pair


def _reference_done(spec: SequenceSpec, w: int) -> bool:
    """Whether window ``w``'s reference pair finished in an earlier run."""
    return (Path(spec.reference_job(w).output) / REFERENCE_DONE).is_file()
