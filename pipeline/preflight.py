"""Every check of a job that needs no pixels, run before discovery so a bad job fails in seconds.

:func:`preflight` checks, in this order and before any catalog search or input cube:

1. the output: not empty, not a file, writable, not inside the inputs or another job's cube
   (:func:`pipeline.containment.check_output`), its bucket reachable (object stores);
2. the size: the job's estimate against ``limits.max_pixels`` (:func:`pipeline.cost.check_job_size`);
3. the models (with ``inference``): the checkpoint loads strictly, the segmenter builds (CLIP
   weights exist and load), both read bands the job has, and the tile size agrees with the
   overlap (an overlap over half the model's tile is refused);
4. the scheduler (``cluster.address``): something listens there.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

from pipeline.containment import check_output
from pipeline.cost import JobEstimate, check_job_size, estimate_job
from pipeline.errors import ClusterError, JobSpecError
from pipeline.spec import JobSpec
from pipeline.storage import Location

__all__ = ["Preflight", "check_models", "check_scheduler", "preflight"]

log = logging.getLogger(__name__)

#: Seconds to wait for the scheduler's port to accept a connection.
SCHEDULER_TIMEOUT = 5.0


@dataclass(frozen=True)
class Preflight:
    """What the checks found: the job's size estimate and the model tile it will use."""

    estimate: JobEstimate
    tile_size: int | None


def check_models(job: JobSpec) -> int:
    """Build the job's change model and segmenter once, as a worker would, and return the tile size.

    Returns
    -------
    int
        The tile side inference will use (the job's, else the model's recommendation, else 512).

    Raises
    ------
    JobSpecError
        The overlap exceeds half of the tile.
    seg2change_core.errors.ModelError
        The checkpoint or the segmenter's weights cannot be loaded (the message names the file).
    InferenceError
        A model reads a band the job does not have.
    """
    from pipeline.models import ModelRuntime, build_models, change_model_info

    info = change_model_info(job.models, job.bands)
    tile = job.tiling.resolve_tile_size(info.tile_size)
    # A baseline fitted once per job is built with a neutral fit: only its loading is checked here.
    fit = (0.0, 1.0) if info.needs_fit else None
    build_models(ModelRuntime(job.models, job.bands, fit=fit))
    return tile


def check_scheduler(address: str, *, timeout: float = SCHEDULER_TIMEOUT) -> None:
    """Check that a Dask scheduler's TCP port accepts connections.

    Raises
    ------
    ClusterError
        Nothing answers at ``address`` within ``timeout`` seconds.
    """
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.scheme not in {"tcp", "tls"}:
        return  # inproc://, ucx://: nothing to probe without a client
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise ClusterError(
            f"scheduler address {address!r} names no host and port; write it as tcp://HOST:PORT, "
            "e.g. tcp://10.0.0.5:8786"
        )
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise ClusterError(
            f"cannot reach the Dask scheduler at {address} ({exc}); start it, check the address, or "
            "leave cluster.address out for a local cluster. Nothing was written."
        ) from None


def preflight(job: JobSpec, *, inference: bool) -> Preflight:
    """Run every check that needs no pixels; see the module's description for the order.

    Parameters
    ----------
    job
        The job.
    inference
        Check the models and the scheduler too (``run``); ``prepare`` needs neither.

    Returns
    -------
    Preflight
        The job's size estimate and tile size.

    Raises
    ------
    Seg2ChangeError
        The first check that fails, with its message (a subclass per kind: :class:`ContainmentError`,
        :class:`StorageError`, :class:`JobSpecError`, :class:`ClusterError`, ``ModelError``,
        :class:`JobTooLargeError`).
    """
    check_output(job)
    Location(job.output).check_access()
    # The size decides by pixels alone, so it is checked before the models are loaded: a continent
    # is refused without importing torch (its message counts tiles of the job's tile size, or 512).
    estimate = check_job_size(job)
    tile: int | None = None
    if inference:
        if job.prompts is None:
            raise JobSpecError(
                "the job names no prompts; add e.g. 'prompts: {classes: [water, \"building,roof,house\"]}' "
                "(prepare alone needs none)"
            )
        tile = check_models(job)
        if job.cluster.address is not None:
            check_scheduler(job.cluster.address)
        estimate = estimate_job(job, tile_size=tile)
    log.info("job estimate: %s", estimate.describe())
    return Preflight(estimate, tile)
