"""Cluster back-ends: a local cluster, an existing scheduler, SLURM (dask-jobqueue) or Kubernetes.

A :data:`ClusterBackendSpec` is one of four frozen pydantic models told apart by ``kind``::

    {kind: local, n_workers: 4}
    {kind: address, address: "tcp://10.0.0.5:8786", gpu: true}
    {kind: slurm, queue: gpu, cores: 8, memory: 64GiB, gpus_per_job: 1, jobs: 4}
    {kind: kubernetes, image: ghcr.io/org/seg2change-gpu-worker:1.2.0, n_workers: 4, gpu: true}

:func:`build_cluster` turns a spec into the cluster it describes. With ``start=False`` (default)
nothing is started anywhere: the result carries the rendered configuration (the keyword arguments
of ``LocalCluster``, the sbatch script dask-jobqueue would submit, or the ``DaskCluster`` manifest
the dask-kubernetes operator would receive), which is what tests and dry runs look at. With
``start=True`` the cluster object is created (and, for SLURM, scaled to ``jobs`` jobs).

GPU workers advertise the ``GPU`` resource (:data:`pipeline.cluster.GPU_RESOURCE`) in every
back-end: ``--resources GPU=<n>`` on the worker command line, with the scheduler (SLURM
``--gres=gpu:<n>``, Kubernetes ``nvidia.com/gpu: <n>``) giving the worker that many devices.

dask-jobqueue and dask-kubernetes are optional and imported only when needed; when absent, the
error names the ``pip install`` that fixes it.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from types import ModuleType
from typing import Annotated, Any, Literal

import dask.config
import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline import __version__
from pipeline.cluster import GPU_RESOURCE
from pipeline.engine_spec import ClusterSpec
from pipeline.errors import ClusterError, JobSpecError

__all__ = [
    "DEFAULT_IMAGE",
    "PLACEHOLDER_SCHEDULER",
    "AddressBackend",
    "BuiltCluster",
    "ClusterBackendSpec",
    "KubernetesBackend",
    "LocalBackend",
    "SlurmBackend",
    "build_cluster",
    "parse_backend",
    "render_daskcluster",
]

#: Image of the GPU worker (``infra/docker/Dockerfile.gpu-worker``), tagged with the installed
#: version; override per deployment.
DEFAULT_IMAGE = f"ghcr.io/seg2change/seg2change-gpu-worker:{__version__}"

#: Scheduler address written into a SLURM job script rendered without a running scheduler.
PLACEHOLDER_SCHEDULER = "tcp://<scheduler-address>:8786"

_FROZEN = ConfigDict(frozen=True, extra="forbid")

_PIP = {
    "dask_jobqueue": "pip install 'dask-jobqueue>=0.9'",
    "dask_kubernetes": "pip install 'dask-kubernetes>=2025.1'",
}


def _optional(module: str, what: str) -> ModuleType:
    """Import an optional dependency, or raise a :class:`ClusterError` naming the install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ClusterError(
            f"{what} needs the '{module.split('.')[0]}' package, which is not installed ({exc}); "
            f"install it with: {_PIP[module.split('.')[0]]}"
        ) from exc


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
        """The :class:`ClusterSpec` of the same local cluster."""
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


class SlurmBackend(_Backend):
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

    def jobqueue_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``SLURMCluster``/``SLURMJob`` (fields left None are omitted)."""
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
        worker_args = _configured("worker-extra-args") + list(self.worker_extra_args)
        if self.gpu:
            processes = self.processes or int(dask.config.get("jobqueue.slurm.processes", None) or 1)
            per_process = max(1, self.gpus_per_job // processes)
            directives = [d for d in directives if not d.startswith("--gres=")]
            directives.append(f"--gres={self.gres or f'gpu:{self.gpus_per_job}'}")
            worker_args = _without_resources(worker_args) + self.worker_resource_args(per_process)
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


def _configured(key: str) -> list[str]:
    """A list setting of the ``jobqueue.slurm`` Dask configuration (empty when unset)."""
    return [str(v) for v in dask.config.get(f"jobqueue.slurm.{key}", None) or []]


def _without_resources(args: list[str]) -> list[str]:
    """Worker arguments with any ``--resources X`` (or ``--resources=X``) pair removed."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--resources":
            skip = True
        elif not arg.startswith("--resources="):
            out.append(arg)
    return out


class KubernetesBackend(_Backend):
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


@dataclass(frozen=True)
class BuiltCluster:
    """A cluster built from a back-end spec.

    Attributes
    ----------
    kind
        The back-end's ``kind``.
    config
        The rendered configuration: ``LocalCluster`` keyword arguments, the scheduler address,
        ``SLURMCluster`` keyword arguments, or the ``DaskCluster`` manifest.
    job_script
        The sbatch script of one worker job (SLURM only).
    cluster
        The cluster object when built with ``start=True`` (``LocalCluster``, ``SLURMCluster``,
        ``KubeCluster``), else None. Close it when done.
    """

    kind: str
    config: dict[str, Any]
    job_script: str | None = None
    cluster: Any = field(default=None, compare=False)

    @property
    def address(self) -> str | None:
        """The scheduler address when known (an address back-end, or a started cluster)."""
        if self.cluster is not None:
            return str(self.cluster.scheduler_address)
        value = self.config.get("address")
        return str(value) if value is not None else None


def _container_env(env: dict[str, str]) -> list[dict[str, str]]:
    return [{"name": key, "value": value} for key, value in sorted(env.items())]


def render_daskcluster(spec: KubernetesBackend) -> dict[str, Any]:
    """The ``DaskCluster`` manifest (``kubernetes.dask.org/v1``) of a Kubernetes back-end.

    The shape is the one the dask-kubernetes operator expects (``spec.scheduler.spec``,
    ``spec.scheduler.service``, ``spec.worker.replicas``, ``spec.worker.spec``); scheduler and
    worker pod specs are ordinary Kubernetes ``PodSpec`` objects.
    """
    env = _container_env(spec.env)
    limits: dict[str, str] = {"memory": spec.worker_memory}
    if spec.gpu:
        limits["nvidia.com/gpu"] = str(spec.gpus_per_worker)
    worker_args = [
        "--name",
        "$(DASK_WORKER_NAME)",
        "--nthreads",
        str(spec.threads_per_worker or (2 if spec.gpu else 1)),
        "--memory-limit",
        spec.worker_memory,
        "--dashboard",
        "--dashboard-address",
        "8788",
        *spec.worker_resource_args(spec.gpus_per_worker),
    ]
    health = {"httpGet": {"port": "http-dashboard", "path": "/health"}}
    worker_pod: dict[str, Any] = {
        "containers": [
            {
                "name": "worker",
                "image": spec.image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["dask", "worker"],
                "args": worker_args,
                "env": env,
                "resources": {
                    "requests": {"cpu": spec.worker_cpu, "memory": spec.worker_memory},
                    "limits": limits,
                },
                "ports": [{"name": "http-dashboard", "containerPort": 8788, "protocol": "TCP"}],
                "livenessProbe": {**health, "initialDelaySeconds": 30, "periodSeconds": 20},
            }
        ],
    }
    if spec.gpu:
        worker_pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    scheduler_pod = {
        "containers": [
            {
                "name": "scheduler",
                "image": spec.image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["dask"],
                "args": ["scheduler", "--host", "0.0.0.0", "--port", "8786", "--dashboard-address", ":8787"],
                "env": env,
                "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
                "ports": [
                    {"name": "tcp-comm", "containerPort": 8786, "protocol": "TCP"},
                    {"name": "http-dashboard", "containerPort": 8787, "protocol": "TCP"},
                ],
                "readinessProbe": {
                    **health,
                    "initialDelaySeconds": 0,
                    "periodSeconds": 1,
                    "timeoutSeconds": 300,
                },
                "livenessProbe": {**health, "initialDelaySeconds": 15, "periodSeconds": 20},
            }
        ],
    }
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "labels": {"app.kubernetes.io/part-of": "seg2change"},
        },
        "spec": {
            "idleTimeout": spec.idle_timeout,
            "scheduler": {
                "spec": scheduler_pod,
                "service": {
                    "type": spec.service_type,
                    "selector": {"dask.org/cluster-name": spec.name, "dask.org/component": "scheduler"},
                    "ports": [
                        {"name": "tcp-comm", "protocol": "TCP", "port": 8786, "targetPort": "tcp-comm"},
                        {
                            "name": "http-dashboard",
                            "protocol": "TCP",
                            "port": 8787,
                            "targetPort": "http-dashboard",
                        },
                    ],
                },
            },
            "worker": {"replicas": spec.n_workers, "spec": worker_pod},
        },
    }


def _slurm(spec: SlurmBackend, start: bool) -> BuiltCluster:
    jobqueue = _optional("dask_jobqueue", "a SLURM cluster")
    kwargs = spec.jobqueue_kwargs()
    try:
        if not start:
            # A job object renders the script without starting a scheduler or submitting anything.
            job = jobqueue.slurm.SLURMJob(scheduler=PLACEHOLDER_SCHEDULER, name="seg2change", **kwargs)
            return BuiltCluster("slurm", kwargs, job_script=str(job.job_script()))
        cluster = jobqueue.SLURMCluster(**kwargs)
    except ValueError as exc:  # dask-jobqueue: cores/memory neither given nor configured
        raise ClusterError(
            f"SLURM cluster: {exc}; give cores and memory in the cluster spec or in the "
            "jobqueue.slurm section of the Dask configuration (see infra/slurm/jobqueue.yaml)"
        ) from exc
    if spec.jobs:
        cluster.scale(jobs=spec.jobs)
    return BuiltCluster("slurm", kwargs, job_script=str(cluster.job_script()), cluster=cluster)


def _kubernetes(spec: KubernetesBackend, start: bool) -> BuiltCluster:
    manifest = render_daskcluster(spec)
    if not start:
        return BuiltCluster("kubernetes", manifest)
    operator = _optional("dask_kubernetes.operator", "a Kubernetes cluster")
    cluster = operator.KubeCluster(custom_cluster_spec=manifest, namespace=spec.namespace)
    return BuiltCluster("kubernetes", manifest, cluster=cluster)


def build_cluster(
    spec: dict[str, Any] | LocalBackend | AddressBackend | SlurmBackend | KubernetesBackend,
    *,
    start: bool = False,
) -> BuiltCluster:
    """Build the cluster a back-end spec describes.

    Parameters
    ----------
    spec
        A back-end model or its mapping (``{"kind": "slurm", ...}``).
    start
        Create the cluster object (a local cluster starts processes here, SLURM submits
        ``jobs`` jobs, Kubernetes creates the ``DaskCluster``). Without it nothing is started
        and only the configuration is rendered.

    Returns
    -------
    BuiltCluster

    Raises
    ------
    JobSpecError
        When the spec is invalid.
    ClusterError
        When the back-end's optional package is missing (the message names the ``pip install``)
        or its configuration is incomplete.
    """
    backend = parse_backend(spec)
    if isinstance(backend, LocalBackend):
        cluster_spec = backend.cluster_spec()
        config = cluster_spec.model_dump(exclude={"address", "torch_threads"})
        if not start:
            return BuiltCluster("local", config)
        from pipeline.cluster import start_local_cluster

        return BuiltCluster("local", config, cluster=start_local_cluster(cluster_spec))
    if isinstance(backend, AddressBackend):
        return BuiltCluster("address", {"address": backend.address, "gpu": backend.gpu})
    if isinstance(backend, SlurmBackend):
        return _slurm(backend, start)
    return _kubernetes(backend, start)
