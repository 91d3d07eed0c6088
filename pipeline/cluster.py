"""Dask clusters for inference: a local one by default, an existing scheduler, or GPU workers.

:func:`connect` turns a :class:`~pipeline.engine_spec.ClusterSpec` (or a ready ``Client``) into a
:class:`ClusterSession` and closes what it started on exit: a local cluster, or the workers of a
launched back-end (``kind: slurm`` submits them as batch jobs, ``kind: kubernetes`` creates a
``DaskCluster``; see :mod:`pipeline.cluster_backends`). GPU work uses Dask's *resources*:
GPU workers advertise ``GPU=1`` and every model task asks for ``GPU=1``
(:meth:`ClusterSession.model_task_resources`), so a worker never runs more model calls than it has
GPUs and CPU-only workers of a mixed cluster never get one. The block tasks (blend, write) ask for
nothing: a GPU worker's second thread runs them while the GPU computes the next tiles. Locally,
GPU workers come from dask-cuda's ``LocalCUDACluster`` (one worker per GPU, two threads) when it
is installed (optional import), else from one ``LocalCluster`` worker holding the ``GPU`` resource.

Torch uses its own intra-op threads; unless told otherwise, each worker gets the cores of its host
divided among the worker threads there, so workers do not oversubscribe the CPUs.

A local cluster is closed by default: its scheduler, workers and nannies listen on 127.0.0.1 only
(in-process workers talk over ``inproc://``, no socket at all), and the HTTP servers Dask always
starts bind 127.0.0.1 on a free port and serve no route: no dashboard, info pages, JSON or
metrics, which carry no authentication. ``ClusterSpec.dashboard`` opens the scheduler's pages at
the address it names. A launched back-end's scheduler (SLURM, Kubernetes) is closed the same way
as far as its workers on other machines allow (:mod:`pipeline.cluster_backends`).
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import dask.config
from distributed import Client, LocalCluster

from pipeline.cluster_backend_specs import GPU_RESOURCE, KubernetesBackend, SlurmBackend
from pipeline.engine_spec import ClusterSpec
from pipeline.errors import ClusterError

__all__ = [
    "GPU_RESOURCE",
    "LOOPBACK",
    "ClusterSession",
    "closed_cluster_options",
    "connect",
    "http_routes",
    "local_cluster_of",
    "report_dashboard",
    "start_local_cluster",
    "torch_threads_for",
]

log = logging.getLogger(__name__)

#: Threads of a local GPU worker: one feeds the GPU, the other blends and writes blocks.
_GPU_WORKER_THREADS = 2

#: The only interface a local cluster listens on.
LOOPBACK = "127.0.0.1"

#: Dask configuration under which the HTTP servers of the scheduler and workers serve nothing.
_NO_HTTP_ROUTES: dict[str, Any] = {
    "distributed.scheduler.http.routes": [],
    "distributed.worker.http.routes": [],
}

#: The routes Dask's configuration held when this module was imported: what an asked dashboard
#: serves, whatever another thread's closed cluster has set meanwhile.
_HTTP_ROUTES_AT_IMPORT: dict[str, Any] = {key: dask.config.get(key) for key in _NO_HTTP_ROUTES}

#: ``dask.config.set`` is not thread-safe: two clusters started at once from two threads could
#: restore each other's routes and leave the process-wide configuration closed for good.
_CONFIG_LOCK = threading.Lock()


#: Dask's switch for the workers' statistical profiler (``distributed.worker.profile``).
_WORKER_PROFILING = "distributed.worker.profile.enabled"


def closed_cluster_options(*, processes: bool, dashboard: str | None = None) -> dict[str, Any]:
    """``LocalCluster`` keyword arguments that keep every listener on 127.0.0.1.

    Parameters
    ----------
    processes
        Workers are processes (TCP on 127.0.0.1) rather than threads of this process (``inproc``).
    dashboard
        ``host:port`` of the scheduler's HTTP pages; None: its HTTP server binds a free port of
        127.0.0.1 (Dask starts one whatever it is told; :func:`start_local_cluster` also takes
        its routes away).

    Returns
    -------
    dict
        ``host`` (with processes), ``dashboard_address``, ``worker_dashboard_address`` and
        ``scheduler_kwargs``.
    """
    options: dict[str, Any] = {
        "dashboard_address": dashboard or f"{LOOPBACK}:0",
        "worker_dashboard_address": f"{LOOPBACK}:0",
        "scheduler_kwargs": {"dashboard": dashboard is not None},
    }
    if processes:  # in-process workers use inproc://, which takes no host
        options["host"] = LOOPBACK
    return options


@dataclass(frozen=True)
class ClusterSession:
    """A connected client and how to use its workers.

    Attributes
    ----------
    client
        The Dask client.
    gpu
        Model tasks request the ``GPU`` resource.
    torch_threads
        Intra-op torch threads per worker process, or None to leave torch's default.
    """

    client: Client
    gpu: bool
    torch_threads: int | None

    def model_task_resources(self) -> dict[str, float] | None:
        """Resources each model task asks for: ``{"GPU": 1}`` on GPU clusters, else None."""
        return {GPU_RESOURCE: 1} if self.gpu else None

    @property
    def n_workers(self) -> int:
        """Workers connected now."""
        return len(self.client.scheduler_info(n_workers=-1)["workers"])


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@contextmanager
def http_routes(*, served: bool) -> Iterator[None]:
    """Dask's HTTP routes for the schedulers and workers created inside: all, or none.

    Dask reads its routes from the process-wide configuration when a scheduler or worker is
    created; the configuration is held, under a lock, until the block ends.

    Parameters
    ----------
    served
        The pages were asked for: the routes Dask's configuration held when this module was
        imported. Otherwise no route at all (every page, ``/health`` included, answers 404).
    """
    config = _HTTP_ROUTES_AT_IMPORT if served else _NO_HTTP_ROUTES
    # Dask warns "Port 8787 is already in use" itself when the asked port is taken; the warning is
    # turned into one log line with the address the pages really took (report_dashboard).
    with _CONFIG_LOCK, dask.config.set(config), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Port \d+ is already in use")
        yield


def start_local_cluster(spec: ClusterSpec) -> LocalCluster:
    """Start the local cluster a spec describes (CPU, or GPU workers with ``spec.gpu``).

    Every listener is on 127.0.0.1 and no HTTP page is served unless ``spec.dashboard`` asks
    (see :func:`closed_cluster_options`). The workers sample their threads' stacks for the
    dashboard's profile page only then: otherwise each worker's event loop walks them every 10 ms
    and keeps the samples of the last hour (about 80 MB after a full Sentinel-2 tile's inference).

    Raises
    ------
    ClusterError
        When GPU workers are wanted but no CUDA device is visible.
    """
    served = spec.dashboard is not None
    with http_routes(served=served), dask.config.set({_WORKER_PROFILING: served}):
        cluster = _local_cluster(spec)
    if spec.dashboard:
        report_dashboard(cluster, spec.dashboard)
    return cluster


def local_cluster_of(**fields: Any) -> LocalCluster:
    """:func:`start_local_cluster` of ``ClusterSpec(**fields)``, closed like every local cluster.

    Usable as prefect-dask's ``DaskTaskRunner(cluster_class=..., cluster_kwargs=fields)``.

    Raises
    ------
    JobSpecError
        When the fields are not a valid :class:`~pipeline.engine_spec.ClusterSpec`.
    """
    return start_local_cluster(ClusterSpec.build(**fields))


def report_dashboard(cluster: Any, asked: str) -> None:
    """Log where a started cluster's scheduler serves the pages asked at ``asked`` (``host:port``).

    A warning when they are elsewhere (the port was taken, or port 0), else an info line.
    """
    host, _, port = asked.rpartition(":")
    actual = cluster.scheduler_info.get("services", {}).get("dashboard")
    link = f"http://{host}:{actual}/info/main/workers.html"
    if str(actual) != port:  # taken, or port 0: the user cannot know the address otherwise
        log.warning("the Dask dashboard asked at %s is at %s", asked, link)
    else:
        log.info("Dask dashboard at %s", link)


def _local_cluster(spec: ClusterSpec) -> LocalCluster:
    n_workers, threads = spec.local_layout(_cpu_count())
    closed = closed_cluster_options(processes=spec.processes, dashboard=spec.dashboard)
    common: dict[str, Any] = {"memory_limit": spec.memory_limit, **closed}
    if not spec.gpu:
        return LocalCluster(
            n_workers=n_workers, threads_per_worker=threads, processes=spec.processes, **common
        )
    gpus = _cuda_devices()
    if gpus == 0:
        raise ClusterError(
            "cluster.gpu is true but no CUDA device is visible on this machine; set cluster.gpu to "
            "false, or give cluster.address of a scheduler whose workers have GPUs"
        )
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        if gpus > 1:
            log.warning(
                "%d GPUs but dask-cuda is not installed: one worker uses one GPU; install dask-cuda "
                "for a worker per GPU",
                gpus,
            )
        return LocalCluster(
            n_workers=1,
            threads_per_worker=spec.threads_per_worker or _GPU_WORKER_THREADS,
            processes=spec.processes,
            resources={GPU_RESOURCE: 1},
            **common,
        )
    cluster: LocalCluster = LocalCUDACluster(  # worker processes, always
        n_workers=spec.n_workers or gpus,
        threads_per_worker=spec.threads_per_worker or _GPU_WORKER_THREADS,
        resources={GPU_RESOURCE: 1},
        memory_limit=spec.memory_limit,
        **closed_cluster_options(processes=True, dashboard=spec.dashboard),
    )
    return cluster


def torch_threads_for(client: Client) -> int:
    """Cores per worker thread, taking the smallest over the cluster's hosts (at least 1)."""
    cores: dict[str, int] = client.run(_cpu_count)
    info = client.scheduler_info(n_workers=-1)["workers"]
    per_host: Counter[str] = Counter()
    host_cores: dict[str, int] = {}
    for address, worker in info.items():
        host = worker.get("host", address)
        per_host[host] += int(worker.get("nthreads", 1))
        if address in cores:
            host_cores[host] = cores[address]
    if not per_host:
        return 1
    return max(1, min(host_cores.get(host, 1) // threads for host, threads in per_host.items()))


def _check_gpu_workers(client: Client) -> None:
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    if not any(w.get("resources", {}).get(GPU_RESOURCE, 0) >= 1 for w in workers):
        raise ClusterError(
            f"the job wants GPU workers but no worker of {client.scheduler_info()['address']} advertises a "
            f"'{GPU_RESOURCE}' resource; start the workers with '--resources {GPU_RESOURCE}=1' "
            "(dask-cuda does with resources set), or run on CPU (cluster.gpu: false, models.device "
            "'auto' or 'cpu')"
        )


def _launch(backend: SlurmBackend | KubernetesBackend, stack: ExitStack) -> Client:
    """Start a launched back-end's cluster (closed with ``stack``) and wait for its first worker."""
    from pipeline.cluster_backends import build_cluster

    built = build_cluster(backend, start=True)
    stack.callback(built.cluster.close)
    client: Client = stack.enter_context(Client(built.cluster))
    try:
        client.wait_for_workers(1, timeout=backend.start_timeout)
    except TimeoutError as exc:
        where = "squeue and the job logs" if backend.kind == "slurm" else "kubectl get pods and their logs"
        raise ClusterError(
            f"no worker of the {backend.kind} cluster joined within {backend.start_timeout:g} s; "
            f"check why the workers did not start ({where}), or give cluster.start_timeout more time"
        ) from exc
    return client


@contextmanager
def connect(cluster: ClusterSpec | Client | None, *, gpu: bool = False) -> Iterator[ClusterSession]:
    """Connect to the cluster for one run; what is started here is closed on exit.

    Parameters
    ----------
    cluster
        A spec (a local cluster, an ``address``, or a launched ``backend`` whose workers are
        started here and stopped on exit), a ready ``Client`` (left open), or None for the
        default local cluster.
    gpu
        The job wants GPU workers (besides ``cluster.gpu``): tasks then request ``GPU=1``.

    Yields
    ------
    ClusterSession

    Raises
    ------
    ClusterError
        When the scheduler cannot be reached, a launched back-end's first worker does not join in
        time, or GPU workers are wanted and none exist.
    """
    with ExitStack() as stack:
        if isinstance(cluster, Client):
            client = cluster
            wants_gpu = gpu
            threads: int | None = None
        else:
            spec = cluster or ClusterSpec()
            wants_gpu = gpu or spec.gpu
            threads = spec.torch_threads
            if spec.backend is not None:
                backend = spec.backend.model_copy(update={"gpu": wants_gpu or spec.backend.gpu})
                client = _launch(backend, stack)
            elif spec.address is not None:
                try:
                    client = stack.enter_context(Client(spec.address, timeout="30s"))
                except OSError as exc:
                    raise ClusterError(
                        f"cannot reach the Dask scheduler at {spec.address} ({exc}); start it, check "
                        "the address, or leave cluster.address out for a local cluster"
                    ) from exc
            else:
                local = stack.enter_context(start_local_cluster(spec.model_copy(update={"gpu": wants_gpu})))
                client = stack.enter_context(Client(local))
        if wants_gpu:
            _check_gpu_workers(client)
        if threads is None:
            threads = torch_threads_for(client)
        yield ClusterSession(client=client, gpu=wants_gpu, torch_threads=threads)
