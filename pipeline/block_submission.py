"""Submitting an inference run's tasks to Dask in the plan's order, and following them to the end.

:func:`run_blocks` submits the tile groups, the task that creates the change cube and the blocks
(:mod:`pipeline.block_tasks`) with explicit priorities, so that workers follow the plan's task
order (:meth:`pipeline.tile_plan.TilePlan.task_order`), then waits for the blocks with a progress
bar. A failed block, a lost scheduler or a cluster left without workers is turned into an error
that says what happened and that a rerun resumes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NoReturn, TypeVar

from distributed import Client, Future, as_completed

from pipeline.block_tasks import (
    BlockContext,
    BlockReport,
    TilePieces,
    compute_tile_group,
    gate,
    pieces_for,
    process_block,
)
from pipeline.errors import ClusterError, InferenceError
from pipeline.input_reader import forget_run
from pipeline.progress import make_progress
from pipeline.tile_plan import GroupKey, PlannedBlock, TilePlan
from seg2change_core.errors import Seg2ChangeError

__all__ = ["WORKERLESS_SECONDS", "clear_input_caches", "completed", "run_blocks"]

log = logging.getLogger(__name__)

#: Seconds a run waits for workers once the cluster has none left, before it gives up.
WORKERLESS_SECONDS = 60.0

Block = tuple[int, int]
T = TypeVar("T")
GroupFuture = Future[dict[Block, TilePieces]]


def run_blocks(
    client: Client,
    context: BlockContext,
    plan: TilePlan,
    planned_blocks: Sequence[PlannedBlock],
    model_resources: dict[str, float] | None,
    progress: bool,
    create: Callable[[], None] | None = None,
) -> list[BlockReport]:
    """Submit the tile groups, ``create`` and the blocks, and wait for the blocks.

    Parameters
    ----------
    client
        The cluster's client.
    context
        What the run's tasks share.
    plan, planned_blocks
        The tile plan and the blocks to compute (:meth:`pipeline.tile_plan.TilePlan.plan`).
    model_resources
        Worker resources a task that calls the models asks for (a GPU), or None.
    progress
        Show a progress bar over the blocks.
    create
        Creates the change cube; None when it exists.

    Returns
    -------
    list of BlockReport
        One per block, in completion order.

    Raises
    ------
    InferenceError
        When a block or the cube's creation fails.
    ClusterError
        When the scheduler or every worker is lost.
    """
    run = context.run[:8]
    priorities = _priorities(client, plan, planned_blocks)
    groups = _submit_groups(client, context, plan, planned_blocks, priorities, model_resources)
    # The blocks after the last group wait for a gate task that depends on the ``threads`` groups
    # before the last ``threads``: a block ready as soon as its pieces are would otherwise take a
    # thread before those last groups, which Dask hands to a worker only as its threads free up.
    # (Depending on every earlier group would hold all their results until the end.)
    threads = priorities.threads
    gate_task = client.submit(
        gate,
        *[groups[key] for key in list(priorities.groups)[-2 * threads : -threads]],
        key=f"infer-gate-{run}",
        pure=False,
        priority=priorities.gate,
    )
    # The cube is created by a task of its own, given to the first thread free after the groups
    # that come before the first block in the plan's order. Created on the client at the start,
    # it competed with the model build and the first reads for the cores.
    first_block = max(priorities.blocks.values())
    created = (
        None
        if create is None
        else client.submit(create, key=f"infer-create-{run}", pure=False, priority=first_block + 1)
    )
    blocks = _submit_blocks(client, context, planned_blocks, priorities, groups, gate_task, created)
    # The client keeps no reference to groups and pieces: each is released once its consumers ran.
    groups.clear()
    del gate_task
    return _follow(client, context.out_path, blocks, created, progress)


@dataclass(frozen=True)
class _Priorities:
    """Dask priorities (higher first) of a run's tasks, following the plan's task order."""

    groups: dict[GroupKey, int]  # in task order
    blocks: dict[Block, int]
    gated: frozenset[Block]  # blocks that wait for the gate
    gate: int
    threads: int


def _priorities(client: Client, plan: TilePlan, planned_blocks: Sequence[PlannedBlock]) -> _Priorities:
    """Explicit priorities (earlier = first) make workers follow the plan's task order: a group's
    pieces are cut right after it, and a block runs as soon as its pieces are there."""
    threads = sum(w.get("nthreads", 1) for w in client.scheduler_info(n_workers=-1)["workers"].values())
    # Two blocks per thread that would wait: a block's blend and write take a fraction of a group's
    # model time, and each deferred block holds its pieces to the end.
    order = plan.task_order(planned_blocks, defer=2 * (threads - 1))
    last_group = max(i for i, item in enumerate(order) if isinstance(item, GroupKey))
    group_priority: dict[GroupKey, int] = {}
    block_priority: dict[Block, int] = {}
    for position, item in enumerate(order):
        if isinstance(item, GroupKey):
            group_priority[item] = -2 * position
        else:
            block_priority[item.block] = -2 * position
    gated = frozenset(item.block for item in order[last_group + 1 :] if isinstance(item, PlannedBlock))
    return _Priorities(group_priority, block_priority, gated, -2 * last_group - 1, threads)


def _submit_groups(
    client: Client,
    context: BlockContext,
    plan: TilePlan,
    planned_blocks: Sequence[PlannedBlock],
    priorities: _Priorities,
    model_resources: dict[str, float] | None,
) -> dict[GroupKey, GroupFuture]:
    """Submit every tile group, in task order. Only the tile groups call the models, so only they
    take a GPU: blocks blend and write beside them."""
    consumers: dict[GroupKey, list[Block]] = {}
    for planned in planned_blocks:
        for key in planned.groups:
            consumers.setdefault(key, []).append(planned.block)
    return {
        key: client.submit(
            compute_tile_group,
            context,
            tuple((t.row, t.col) for t in plan.tiles_of(key)),
            tuple(consumers[key]),
            key=f"infer-tiles-{key.strip}-{key.row}-{key.col}-{key.tile_row}-{context.run[:8]}",
            pure=False,
            resources=model_resources,
            priority=key_priority,
        )
        for key, key_priority in priorities.groups.items()
    }


def _submit_blocks(
    client: Client,
    context: BlockContext,
    planned_blocks: Sequence[PlannedBlock],
    priorities: _Priorities,
    groups: dict[GroupKey, GroupFuture],
    gate_task: Future[None],
    created: Future[None] | None,
) -> dict[Future[BlockReport], Block]:
    """Submit each block with the tasks that pick its pieces out of its groups' results; when a
    submission fails, everything submitted so far is cancelled."""
    run = context.run[:8]
    blocks: dict[Future[BlockReport], Block] = {}
    try:
        for planned in planned_blocks:
            row, col = planned.block
            ordered = planned.reports + tuple(g for g in planned.groups if g not in planned.reports)
            pieces = [
                client.submit(
                    pieces_for,
                    groups[key],
                    planned.block,
                    key=f"infer-pick-{key.strip}-{key.row}-{key.col}-{key.tile_row}-{row}-{col}-{run}",
                    pure=False,
                    priority=priorities.groups[key],
                )
                for key in ordered
            ]
            future = client.submit(
                process_block,
                context,
                row,
                col,
                len(planned.reports),
                *pieces,
                after=(gate_task if planned.block in priorities.gated else None, created),
                key=f"infer-block-{row}-{col}-{run}",
                pure=False,
                priority=priorities.blocks[planned.block],
            )
            blocks[future] = planned.block
    except BaseException:
        client.cancel([*groups.values(), gate_task, *blocks, *([created] if created else [])])
        raise
    return blocks


def _follow(
    client: Client,
    out_path: str,
    blocks: dict[Future[BlockReport], Block],
    created: Future[None] | None,
    progress: bool,
) -> list[BlockReport]:
    """Wait for the blocks, advancing a progress bar; the first failure stops the run."""
    reports: list[BlockReport] = []
    with make_progress(enabled=progress) as bar:
        task = bar.add_task("inference", total=len(blocks))
        try:
            for future in completed(client, list(blocks)):
                if future.status != "finished":
                    _raise_failure(client, out_path, blocks[future], future, created)
                reports.append(future.result())
                bar.advance(task)
        finally:
            client.cancel([f for f in blocks if not f.done()])
    return reports


def _raise_failure(
    client: Client, out_path: str, block: Block, future: Future[BlockReport], created: Future[None] | None
) -> NoReturn:
    """Raise the error that says why ``block``'s task did not finish."""
    if created is not None and created.status == "error":
        failure = created.exception()
        if isinstance(failure, Seg2ChangeError):
            raise failure
        raise InferenceError(
            f"cannot create the change cube {out_path} ({type(failure).__name__}: "
            f"{failure}); check that the workers can write there"
        ) from failure
    exc = None if future.status == "cancelled" else future.exception()
    if exc is None and client.status != "running":
        # Cancelled by no one here: the client lost its scheduler, and with it every task.
        raise ClusterError(
            f"lost the Dask scheduler {_scheduler_address(client)} while block {block} "
            f"was pending (the client is {client.status}): the scheduler stopped or "
            "cannot be reached; blocks finished so far are kept: start the scheduler "
            "(or use a local cluster) and run the same job again to resume"
        )
    if exc is None:
        raise ClusterError(
            f"the Dask scheduler {_scheduler_address(client)} cancelled the task of block "
            f"{block} (seen after workers were lost); blocks finished so far are kept: "
            "check the workers' logs and run the same job again to resume"
        )
    if isinstance(exc, Seg2ChangeError):
        log.error("block %s failed: %s", block, exc)
        raise exc
    raise InferenceError(
        f"block {block} failed ({type(exc).__name__}: {exc}); blocks finished so far "
        "are kept: fix the cause and run the same job again to resume"
    ) from exc


def clear_input_caches(client: Client, run: str) -> None:
    """Drop the run's cached input chunks on every worker; a cluster already gone has nothing to drop."""
    try:
        client.run(forget_run, run)
    except Exception as exc:  # the error that stopped the run is the one to report, not this one
        log.debug("could not clear the input caches of run %s: %s", run[:8], exc)


def _scheduler_address(client: Client) -> str:
    """The scheduler's address as the client last knew it (no request: it may be gone)."""
    try:
        return str(client.scheduler_info().get("address", "?"))
    except Exception:
        return "?"


def completed(client: Client, futures: Sequence[Future[T]]) -> Iterator[Future[T]]:
    """Yield ``futures`` as they finish, or raise :class:`ClusterError` once the cluster has had no
    worker for :data:`WORKERLESS_SECONDS` (Dask would wait for new workers for ever)."""
    pending = as_completed(list(futures))
    workerless_since: float | None = None
    checked = 0.0
    while not pending.is_empty():
        batch = pending.next_batch(block=False)
        if batch:
            workerless_since = None
            yield from batch
            continue
        time.sleep(0.05)
        now = time.monotonic()
        if now - checked < 1.0:
            continue
        checked = now
        if client.nthreads():
            workerless_since = None
        elif workerless_since is None:
            workerless_since = now
        elif now - workerless_since > WORKERLESS_SECONDS:
            raise ClusterError(
                f"the Dask cluster at {_scheduler_address(client)} has had no worker for "
                f"{WORKERLESS_SECONDS:.0f} s: all its workers were lost (their logs say why: memory "
                "limit, killed, machine gone); blocks finished so far are kept: start workers and run "
                "the same job again to resume"
            )
