"""Specs of the cluster back-ends: a local cluster, an existing scheduler, SLURM or Kubernetes.

A :data:`ClusterBackendSpec` is one of four frozen pydantic models told apart by ``kind``::

    {kind: local, n_workers: 4}
    {kind: address, address: "tcp://10.0.0.5:8786", gpu: true}
    {kind: slurm, queue: gpu, cores: 8, memory: 64GiB, gpus_per_job: 1, jobs: 4}
    {kind: kubernetes, image: ghcr.io/org/seg2change-gpu-worker:1.2.0, n_workers: 4, gpu: true}

A job's ``cluster`` (:class:`~pipeline.engine_spec.ClusterSpec`) describes a local cluster or an
address itself and holds a launched back-end (SLURM, Kubernetes) as its ``backend``, which a job
file writes flat: ``cluster: {kind: slurm, queue: gpu, gpu: true, jobs: 4}``
(:func:`gather_backend_fields`). :mod:`pipeline.cluster_backends` renders and starts them.

This module imports nothing of :mod:`pipeline.cluster` or :mod:`pipeline.engine_spec`, so that the
job spec can hold these models.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline import __version__
from pipeline.errors import JobSpecError

if TYPE_CHECKING:
    from pipeline.engine_spec import ClusterSpec

__all__ = [
    "DEFAULT_IMAGE",
    "GPU_RESOURCE",
    "LAUNCHED_KINDS",
    "CLOSED_WORKER_ARGS",
    "AddressBackend",
    "ClusterBackendSpec",
    "ClusterKind",
    "KubernetesBackend",
    "LaunchedBackend",
    "LocalBackend",
    "SlurmBackend",
    "check_dashboard_address",
    "gather_backend_fields",
    "parse_backend",
]

#: Name of the Dask worker resource that GPU workers advertise and inference tasks request.
GPU_RESOURCE = "GPU"

#: Image of the GPU worker (``infra/docker/Dockerfile.gpu-worker``), tagged with the installed
#: version; override per deployment.
DEFAULT_IMAGE = f"ghcr.io/seg2change/seg2change-gpu-worker:{__version__}"

#: Where a job's blocks are computed: a local cluster, a running scheduler, or workers that the
#: run submits as SLURM jobs or creates as a Kubernetes ``DaskCluster``.
ClusterKind = Literal["local", "address", "slurm", "kubernetes"]

#: The kinds whose cluster the run launches and closes (their fields live in a back-end model).
LAUNCHED_KINDS = ("slurm", "kubernetes")

#: ``dask worker`` arguments of a SLURM worker: no dashboard, and its HTTP server (Dask starts one
#: whatever it is told) on the compute node's loopback only.
CLOSED_WORKER_ARGS = ("--no-dashboard", "--dashboard-address", "127.0.0.1:0")

#: Fields of a job's ``cluster`` that every kind shares; the rest of a launched kind's fields are
#: its back-end's.
_SHARED_FIELDS = ("kind", "gpu", "torch_threads")

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class _Backend(BaseModel):
    model_config = _FROZEN

    gpu: bool = False

    def worker_resource_args(self, gpus: int = 1) -> list[str]:
        """``dask worker`` arguments that advertise the GPU resource (empty without ``gpu``)."""
        return ["--resources", f"{GPU_RESOURCE}={gpus}"] if self.gpu else []


class LocalBackend(_Backend):
    """A local cluster on this machine (see :func:`pipeline.cluster.start_local_cluster`)."""

    kind: Literal["local"] = "local"
    n_workers: int | None = Field(default=None, ge=1)
    threads_per_worker: int | None = Field(default=None, ge=1)
    processes: bool = False
    memory_limit: str = "auto"

    def cluster_spec(self) -> ClusterSpec:
        """The :class:`~pipeline.engine_spec.ClusterSpec` of the same local cluster."""
        from pipeline.engine_spec import ClusterSpec

        return ClusterSpec(
            n_workers=self.n_workers,
            threads_per_worker=self.threads_per_worker,
            processes=self.processes,
            memory_limit=self.memory_limit,
            gpu=self.gpu,
        )


class AddressBackend(_Backend):
    """A scheduler that already runs (started by compose, a HPC allocation, the operator...)."""

    kind: Literal["address"] = "address"
    address: str

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if "://" not in value or not value.split("://", 1)[1].strip():
            raise ValueError(f"address {value!r} is not a scheduler address; give e.g. 'tcp://10.0.0.5:8786'")
        return value


class _LaunchedBackend(_Backend):
    start_timeout: float = Field(default=600.0, gt=0)


def check_dashboard_address(value: str | None) -> str | None:
    """``value`` when it is ``host:port`` (or None).

    Raises
    ------
    ValueError
        Naming the form to give.
    """
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(
            f"dashboard {value!r} is not host:port; give e.g. '127.0.0.1:8787' (port 0: any free port)"
        )
    return value


class SlurmBackend(_LaunchedBackend):
    """Dask workers as SLURM batch jobs (dask-jobqueue ``SLURMCluster``).

    Fields left at None fall back to the ``jobqueue.slurm`` section of the Dask configuration
    (``infra/slurm/jobqueue.yaml`` placed in ``~/.config/dask/``), as dask-jobqueue does.

    Attributes
    ----------
    queue, account, walltime
        Partition, account and time limit of each job.
    cores, memory, processes
        Cores, memory and Dask worker processes per job.
    gpus_per_job
        GPUs per job (``--gres=gpu:<n>``), shared among the job's worker processes; only with
        ``gpu``.
    gres
        Explicit generic-resource request replacing ``gpu:<gpus_per_job>`` (e.g. ``gpu:a100:1``).
    jobs
        Jobs to submit when started.
    job_extra_directives, job_script_prologue, worker_extra_args
        Extra ``#SBATCH`` lines, shell lines run before the worker (``module load``, activating the
        environment) and extra ``dask worker`` arguments.
    local_directory, log_directory, interface, python
        Worker scratch folder, folder of the job logs, network interface, Python of the workers.
    dashboard
        ``host:port`` at which the scheduler (in the run's process) serves its HTTP pages, e.g.
        ``127.0.0.1:8787`` (port 0: a free one). Default: none; they carry no authentication, so
        keep the host 127.0.0.1 and tunnel through SSH.
    start_timeout
        Seconds a run waits for the first worker to join (the jobs may wait in the queue).
    """

    kind: Literal["slurm"] = "slurm"
    queue: str | None = None
    account: str | None = None
    walltime: str | None = None
    cores: int | None = Field(default=None, ge=1)
    memory: str | None = None
    processes: int | None = Field(default=None, ge=1)
    gpus_per_job: int = Field(default=1, ge=1)
    gres: str | None = None
    jobs: int = Field(default=1, ge=0)
    job_extra_directives: tuple[str, ...] = ()
    job_script_prologue: tuple[str, ...] = ()
    worker_extra_args: tuple[str, ...] = ()
    local_directory: str | None = None
    log_directory: str | None = None
    interface: str | None = None
    python: str | None = None
    dashboard: str | None = None

    @field_validator("dashboard")
    @classmethod
    def _dashboard(cls, value: str | None) -> str | None:
        return check_dashboard_address(value)

    @model_validator(mode="after")
    def _check(self) -> SlurmBackend:
        if self.gres is not None and not self.gpu:
            raise ValueError("gres requests GPUs but gpu is false; set gpu: true or drop gres")
        if self.gpu and self.processes is not None and self.processes > self.gpus_per_job:
            raise ValueError(
                f"{self.processes} worker processes per job would share {self.gpus_per_job} GPU(s); "
                "set processes to at most gpus_per_job (one model task per GPU)"
            )
        return self

    def scheduler_options(self) -> dict[str, Any]:
        """``SLURMCluster``'s ``scheduler_options``: the configured ones, its HTTP pages closed.

        The configured ``jobqueue.slurm.scheduler-options`` (host, interface, port...) are kept,
        but where the pages are served is this spec's alone: ``dashboard`` when given, else a
        free port of 127.0.0.1 (with :func:`pipeline.cluster.http_routes` serving no route).
        """
        configured = dict(_configured_value("scheduler-options") or {})
        return {
            **configured,
            "dashboard_address": self.dashboard or "127.0.0.1:0",
            "dashboard": self.dashboard is not None,
        }

    def jobqueue_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``SLURMJob`` (fields left None are omitted).

        The workers' own HTTP pages are closed (:data:`CLOSED_WORKER_ARGS`) whatever the Dask
        configuration says; this spec's ``worker_extra_args`` come after and may open them.
        """
        kwargs: dict[str, Any] = {
            name: getattr(self, name)
            for name in (
                "queue",
                "account",
                "walltime",
                "cores",
                "memory",
                "processes",
                "local_directory",
                "log_directory",
                "interface",
                "python",
            )
            if getattr(self, name) is not None
        }
        # Lists given here replace dask-jobqueue's configured ones, so start from the configured
        # lists (infra/slurm/jobqueue.yaml) and add what is missing.
        directives = _configured("job-extra-directives") + list(self.job_extra_directives)
        configured_args = _without(
            _configured("worker-extra-args"), _DASHBOARD_FLAGS, ("--dashboard-address",)
        )
        worker_args = configured_args + list(CLOSED_WORKER_ARGS) + list(self.worker_extra_args)
        if self.gpu:
            processes = self.processes or int(_configured_value("processes") or 1)
            # Left to itself dask-jobqueue splits a job into about sqrt(cores) processes, each of
            # which would advertise the job's GPU: say how many there are.
            kwargs["processes"] = processes
            per_process = max(1, self.gpus_per_job // processes)
            directives = [d for d in directives if not d.startswith("--gres=")]
            directives.append(f"--gres={self.gres or f'gpu:{self.gpus_per_job}'}")
            worker_args = _without(worker_args, (), ("--resources",)) + self.worker_resource_args(per_process)
        directives = list(dict.fromkeys(directives))
        if directives:
            kwargs["job_extra_directives"] = directives
        if worker_args:
            kwargs["worker_extra_args"] = worker_args
        if self.job_script_prologue:
            kwargs["job_script_prologue"] = _configured("job-script-prologue") + list(
                self.job_script_prologue
            )
        return kwargs


def _configured_value(key: str) -> Any:
    """A setting of the ``jobqueue.slurm`` Dask configuration (None when unset)."""
    import dask.config  # not at import: a job file is checked before the heavy libraries load

    return dask.config.get(f"jobqueue.slurm.{key}", None)


def _configured(key: str) -> list[str]:
    """A list setting of the ``jobqueue.slurm`` Dask configuration (empty when unset)."""
    return [str(v) for v in _configured_value(key) or []]


_DASHBOARD_FLAGS = ("--dashboard", "--no-dashboard")


def _without(args: list[str], flags: tuple[str, ...], valued: tuple[str, ...]) -> list[str]:
    """Worker arguments without the ``flags`` and the ``valued`` options (``--x X`` or ``--x=X``)."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in valued:
            skip = True
        elif arg not in flags and not arg.startswith(tuple(f"{v}=" for v in valued)):
            out.append(arg)
    return out


class KubernetesBackend(_LaunchedBackend):
    """A ``DaskCluster`` of the dask-kubernetes operator.

    Attributes
    ----------
    name, namespace
        Name and namespace of the ``DaskCluster`` resource.
    image
        Image of the scheduler and the workers (both run the project).
    n_workers
        Worker replicas.
    worker_cpu, worker_memory
        CPU and memory each worker requests (the memory is also its limit and Dask's limit).
    gpus_per_worker
        ``nvidia.com/gpu`` each worker gets (only with ``gpu``).
    threads_per_worker
        ``--nthreads`` of each worker; default 2 with ``gpu`` (one feeds the GPU, the other blends
        and writes blocks), else 1.
    env
        Environment variables of the scheduler and the workers.
    idle_timeout
        Seconds of scheduler idleness after which the operator deletes the cluster (0: never).
    service_type
        Type of the scheduler Service (``ClusterIP``, ``NodePort``, ``LoadBalancer``).
    dashboard
        The scheduler and workers serve their HTTP pages (dashboard, info pages, metrics) on the
        pods' HTTP ports, the scheduler's through its Service (``kubectl port-forward``). Default:
        false, they serve ``/health`` alone, which the probes ask.
    start_timeout
        Seconds a run waits for the first worker to join.
    """

    kind: Literal["kubernetes"] = "kubernetes"
    name: str = "seg2change"
    namespace: str = "default"
    image: str = DEFAULT_IMAGE
    n_workers: int = Field(default=2, ge=0)
    worker_cpu: str = "4"
    worker_memory: str = "16Gi"
    gpus_per_worker: int = Field(default=1, ge=1)
    threads_per_worker: int | None = Field(default=None, ge=1)
    env: dict[str, str] = Field(default_factory=dict)
    idle_timeout: int = Field(default=0, ge=0)
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    dashboard: bool = False

    @field_validator("dashboard", mode="before")
    @classmethod
    def _dashboard(cls, value: Any) -> Any:
        if isinstance(value, str) and ":" in value:
            raise ValueError(
                f"dashboard {value!r}: a kubernetes scheduler serves its pages in its pod, not at an "
                "address of this machine; give dashboard: true and reach them with kubectl "
                "port-forward service/<name>-scheduler 8787"
            )
        return value

    @field_validator("name")
    @classmethod
    def _dns_name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", value):
            raise ValueError(
                f"name {value!r} is not a Kubernetes resource name; use lower-case letters, digits and '-'"
            )
        return value


#: One cluster back-end, told apart by ``kind``.
ClusterBackendSpec = Annotated[
    LocalBackend | AddressBackend | SlurmBackend | KubernetesBackend, Field(discriminator="kind")
]

#: A back-end whose cluster a run launches and closes.
LaunchedBackend = Annotated[SlurmBackend | KubernetesBackend, Field(discriminator="kind")]

_ADAPTER: pydantic.TypeAdapter[LocalBackend | AddressBackend | SlurmBackend | KubernetesBackend] = (
    pydantic.TypeAdapter(ClusterBackendSpec)
)


def parse_backend(
    data: dict[str, Any] | LocalBackend | AddressBackend | SlurmBackend | KubernetesBackend,
) -> LocalBackend | AddressBackend | SlurmBackend | KubernetesBackend:
    """Validate a mapping into its back-end model.

    Raises
    ------
    JobSpecError
        Naming the field and the fix (an unknown ``kind`` lists the known ones).
    """
    if isinstance(data, _Backend):
        return data
    try:
        return _ADAPTER.validate_python(data)
    except pydantic.ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "cluster"
            message = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "is not a known field; check its spelling"
            elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
                message = "kind must be one of local, address, slurm, kubernetes"
            lines.append(f"{where}: {message}")
        raise JobSpecError("invalid cluster: " + "; ".join(lines)) from None


def gather_backend_fields(value: Any) -> Any:
    """Gather the back-end fields of a job's flat ``cluster`` mapping into its ``backend``.

    ``{kind: slurm, gpu: true, queue: gpu, jobs: 4}`` becomes ``{kind: slurm, gpu: true,
    backend: SlurmBackend(gpu=True, queue="gpu", jobs=4)}``; ``torch_threads`` stays with the
    job's cluster. A mapping of another kind, or one whose ``backend`` is given already (a
    dumped spec read back), is returned as it is.

    Raises
    ------
    JobSpecError
        Naming the field and the fix (a ``ValueError``, so pydantic reports it at ``cluster``).
    """
    if not isinstance(value, Mapping) or value.get("kind") not in LAUNCHED_KINDS or "backend" in value:
        return value
    shared = {name: value[name] for name in _SHARED_FIELDS if name in value}
    fields = {name: v for name, v in value.items() if name != "torch_threads"}
    return {**shared, "backend": parse_backend(fields)}
