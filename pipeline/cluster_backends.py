"""Cluster back-ends rendered and started: a local cluster, an existing scheduler, SLURM or Kubernetes.

The back-end specs (:data:`ClusterBackendSpec`, one of four frozen pydantic models told apart by
``kind``) live in :mod:`pipeline.cluster_backend_specs`; a job names one in its ``cluster``
(``cluster: {kind: slurm, queue: gpu, gpu: true, jobs: 4}``) and :func:`pipeline.cluster.connect`
starts it here for the run.

:func:`build_cluster` turns a spec into the cluster it describes. With ``start=False`` (default)
nothing is started anywhere: the result carries the rendered configuration (the keyword arguments
of ``LocalCluster``, the sbatch script dask-jobqueue would submit, or the ``DaskCluster`` manifest
the dask-kubernetes operator would receive), which is what tests and dry runs look at. With
``start=True`` the cluster object is created (and, for SLURM, scaled to ``jobs`` jobs).

GPU workers advertise the ``GPU`` resource (:data:`pipeline.cluster.GPU_RESOURCE`) in every
back-end: ``--resources GPU=<n>`` on the worker command line, with the scheduler (SLURM
``--gres=gpu:<n>``, Kubernetes ``nvidia.com/gpu: <n>``) giving the worker that many devices.

What a launched cluster opens, by default (issue 16: nothing unauthenticated beyond what the
workers on other machines need):

- **SLURM.** The scheduler runs in the run's process. Its comm port listens where the worker jobs
  on the compute nodes can reach it: on ``interface`` (or the configured
  ``jobqueue.slurm.scheduler-options`` host/interface), else on every interface, because that is
  the point of SLURM. That port speaks Dask's protocol without authentication, and whoever
  reaches it can run code as the run's user: name the cluster's internal network in
  ``interface``. Its HTTP server binds a free port of 127.0.0.1 and serves no route, whatever
  dask-jobqueue's configuration says (``scheduler-options: {dashboard_address: ":8787"}``), unless
  ``dashboard: host:port`` asks. Each worker listens on its node for the scheduler and its peers;
  its HTTP server is on the node's 127.0.0.1 with no dashboard
  (:data:`~pipeline.cluster_backend_specs.CLOSED_WORKER_ARGS`).
- **Kubernetes.** The scheduler and workers listen on their pods' addresses (the kubelet's probes
  and the other pods must reach them); the scheduler's Service (``ClusterIP`` by default: inside
  the cluster only) forwards its comm port and its HTTP port, which the dask-kubernetes client
  looks up. Their HTTP servers serve ``/health`` alone (the probes) unless ``dashboard: true``.

dask-jobqueue and dask-kubernetes are optional and imported only when needed; when absent, the
error names the ``pip install`` that fixes it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from pipeline.cluster import http_routes, report_dashboard, start_local_cluster
from pipeline.cluster_backend_specs import (
    DEFAULT_IMAGE,
    AddressBackend,
    ClusterBackendSpec,
    KubernetesBackend,
    LocalBackend,
    SlurmBackend,
    parse_backend,
)
from pipeline.errors import ClusterError

__all__ = [
    "DEFAULT_IMAGE",
    "HEALTH_ONLY_ENV",
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

#: Scheduler address written into a SLURM job script rendered without a running scheduler.
PLACEHOLDER_SCHEDULER = "tcp://<scheduler-address>:8786"

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


#: Probe of the HTTP health route that Dask's schedulers and workers serve.
_HEALTH = {"httpGet": {"port": "http-dashboard", "path": "/health"}}

#: Dask configuration, as the environment variable of a scheduler or worker pod, under which its
#: HTTP server serves ``/health`` alone.
HEALTH_ONLY_ENV = {
    component: {f"DASK_DISTRIBUTED__{component.upper()}__HTTP__ROUTES": '["distributed.http.health"]'}
    for component in ("scheduler", "worker")
}


def _pod_env(spec: KubernetesBackend, component: str) -> list[dict[str, str]]:
    """A pod's environment: the spec's, over the health-only routes unless ``dashboard``."""
    return _container_env({**({} if spec.dashboard else HEALTH_ONLY_ENV[component]), **spec.env})


def _dashboard_flag(spec: KubernetesBackend) -> str:
    return "--dashboard" if spec.dashboard else "--no-dashboard"


def _worker_pod(spec: KubernetesBackend) -> dict[str, Any]:
    """The ``PodSpec`` of a worker: ``dask worker`` with the GPU resource and limits when asked."""
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
        _dashboard_flag(spec),
        "--dashboard-address",
        "8788",
        *spec.worker_resource_args(spec.gpus_per_worker),
    ]
    worker_pod: dict[str, Any] = {
        "containers": [
            {
                "name": "worker",
                "image": spec.image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["dask", "worker"],
                "args": worker_args,
                "env": _pod_env(spec, "worker"),
                "resources": {
                    "requests": {"cpu": spec.worker_cpu, "memory": spec.worker_memory},
                    "limits": limits,
                },
                "ports": [{"name": "http-dashboard", "containerPort": 8788, "protocol": "TCP"}],
                "livenessProbe": {**_HEALTH, "initialDelaySeconds": 30, "periodSeconds": 20},
            }
        ],
    }
    if spec.gpu:
        worker_pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return worker_pod


def _scheduler_pod(spec: KubernetesBackend) -> dict[str, Any]:
    """The ``PodSpec`` of the scheduler: ``dask scheduler`` on 8786, its HTTP server on 8787."""
    return {
        "containers": [
            {
                "name": "scheduler",
                "image": spec.image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["dask"],
                "args": [
                    "scheduler",
                    "--host",
                    "0.0.0.0",
                    "--port",
                    "8786",
                    _dashboard_flag(spec),
                    "--dashboard-address",
                    ":8787",
                ],
                "env": _pod_env(spec, "scheduler"),
                "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
                "ports": [
                    {"name": "tcp-comm", "containerPort": 8786, "protocol": "TCP"},
                    {"name": "http-dashboard", "containerPort": 8787, "protocol": "TCP"},
                ],
                "readinessProbe": {
                    **_HEALTH,
                    "initialDelaySeconds": 0,
                    "periodSeconds": 1,
                    "timeoutSeconds": 300,
                },
                "livenessProbe": {**_HEALTH, "initialDelaySeconds": 15, "periodSeconds": 20},
            }
        ],
    }


def _scheduler_service(spec: KubernetesBackend) -> dict[str, Any]:
    """The ``ServiceSpec`` of the scheduler's comm and HTTP ports (``/health`` alone unless ``dashboard``)."""
    return {
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
    }


def render_daskcluster(spec: KubernetesBackend) -> dict[str, Any]:
    """The ``DaskCluster`` manifest (``kubernetes.dask.org/v1``) of a Kubernetes back-end.

    The shape is the one the dask-kubernetes operator expects (``spec.scheduler.spec``,
    ``spec.scheduler.service``, ``spec.worker.replicas``, ``spec.worker.spec``); scheduler and
    worker pod specs are ordinary Kubernetes ``PodSpec`` objects.
    """
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
            "scheduler": {"spec": _scheduler_pod(spec), "service": _scheduler_service(spec)},
            "worker": {"replicas": spec.n_workers, "spec": _worker_pod(spec)},
        },
    }


def _slurm(spec: SlurmBackend, start: bool) -> BuiltCluster:
    jobqueue = _optional("dask_jobqueue", "a SLURM cluster")
    kwargs = spec.jobqueue_kwargs()
    config = {**kwargs, "scheduler_options": spec.scheduler_options()}
    try:
        if not start:
            # A job object renders the script without starting a scheduler or submitting anything.
            job = jobqueue.slurm.SLURMJob(scheduler=PLACEHOLDER_SCHEDULER, name="seg2change", **kwargs)
            return BuiltCluster("slurm", config, job_script=str(job.job_script()))
        with http_routes(served=spec.dashboard is not None):
            cluster = jobqueue.SLURMCluster(**config)
    except ValueError as exc:  # dask-jobqueue: cores/memory neither given nor configured
        raise ClusterError(
            f"SLURM cluster: {exc}; give cores and memory in the cluster spec or in the "
            "jobqueue.slurm section of the Dask configuration (see infra/slurm/jobqueue.yaml)"
        ) from exc
    if spec.dashboard:
        report_dashboard(cluster, spec.dashboard)
    if spec.jobs:
        cluster.scale(jobs=spec.jobs)
    return BuiltCluster("slurm", config, job_script=str(cluster.job_script()), cluster=cluster)


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
        config = cluster_spec.model_dump(exclude={"address", "torch_threads", "kind", "backend"})
        if not start:
            return BuiltCluster("local", config)
        return BuiltCluster("local", config, cluster=start_local_cluster(cluster_spec))
    if isinstance(backend, AddressBackend):
        return BuiltCluster("address", {"address": backend.address, "gpu": backend.gpu})
    if isinstance(backend, SlurmBackend):
        return _slurm(backend, start)
    return _kubernetes(backend, start)
