"""Cluster manifests (Kubernetes, Prefect work pool, SLURM, compose) and the cluster back-ends.

Kubernetes objects are validated against the Kubernetes JSON schemas that kubernetes-validate
ships (offline). The ``DaskCluster`` custom resource is checked against the operator's CRD shape
(``spec.scheduler.{spec,service}``, ``spec.worker.{replicas,spec}``), with its pod and service
specs validated strictly as a Kubernetes ``Pod``/``Service``. ``build_cluster(..., start=False)``
must render each back-end without starting anything.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import dask.config
import pytest
import yaml

from pipeline.cluster_backends import (
    PLACEHOLDER_SCHEDULER,
    KubernetesBackend,
    SlurmBackend,
    build_cluster,
    parse_backend,
    render_daskcluster,
)
from pipeline.engine_spec import ClusterSpec
from pipeline.errors import ClusterError, JobSpecError
from pipeline.spec import JobSpec

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S_VERSION = "1.33"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _k8s_validate(doc: dict[str, Any]) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate==1.37.0")
    try:
        kv.validate(doc, K8S_VERSION, strict=True)
    except kv.ValidationError as exc:  # pragma: no cover - the message is the point
        pytest.fail(
            f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {exc.message} at {list(exc.path)}"
        )


# --- Kubernetes -------------------------------------------------------------------------------


def test_daskcluster_has_the_operator_crd_shape_and_a_gpu_worker_group() -> None:
    (doc,) = _docs(INFRA / "k8s" / "daskcluster.yaml")
    assert doc["apiVersion"] == "kubernetes.dask.org/v1" and doc["kind"] == "DaskCluster"
    assert re.fullmatch(r"[a-z0-9-]+", doc["metadata"]["name"])
    spec = doc["spec"]
    assert set(spec) <= {"idleTimeout", "scheduler", "worker"} and {"scheduler", "worker"} <= set(spec)
    assert set(spec["scheduler"]) == {"spec", "service"}
    assert isinstance(spec["worker"]["replicas"], int) and spec["worker"]["replicas"] >= 1
    (worker,) = spec["worker"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    args = worker["args"]
    assert args[args.index("--resources") + 1] == "GPU=1"
    assert worker["command"] == ["dask", "worker"]
    (scheduler,) = spec["scheduler"]["spec"]["containers"]
    assert {p["containerPort"] for p in scheduler["ports"]} == {8786, 8787}
    selector = spec["scheduler"]["service"]["selector"]
    assert selector == {"dask.org/cluster-name": doc["metadata"]["name"], "dask.org/component": "scheduler"}


def test_daskcluster_pod_and_service_specs_are_valid_kubernetes() -> None:
    (doc,) = _docs(INFRA / "k8s" / "daskcluster.yaml")
    meta = {"name": "x", "namespace": "seg2change"}
    _k8s_validate(
        {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": doc["spec"]["worker"]["spec"]}
    )
    _k8s_validate(
        {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": doc["spec"]["scheduler"]["spec"]}
    )
    _k8s_validate(
        {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": doc["spec"]["scheduler"]["service"]}
    )


def test_validation_catches_a_broken_pod_spec() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate==1.37.0")
    (doc,) = _docs(INFRA / "k8s" / "daskcluster.yaml")
    pod = json.loads(json.dumps(doc["spec"]["worker"]["spec"]))
    pod["containers"][0]["resources"]["limit"] = pod["containers"][0]["resources"].pop("limits")  # a typo
    with pytest.raises(kv.ValidationError):
        kv.validate(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": pod}, K8S_VERSION, True
        )


def test_daskcluster_manifest_is_what_the_kubernetes_backend_renders() -> None:
    (doc,) = _docs(INFRA / "k8s" / "daskcluster.yaml")
    rendered = build_cluster({"kind": "kubernetes", "namespace": "seg2change", "gpu": True}, start=False)
    assert rendered.cluster is None and rendered.job_script is None
    assert rendered.config == doc


def test_prefect_worker_manifests_are_valid_kubernetes() -> None:
    docs = _docs(INFRA / "k8s" / "prefect-worker.yaml")
    assert [d["kind"] for d in docs] == ["ServiceAccount", "Role", "RoleBinding", "Deployment"]
    for doc in docs:
        _k8s_validate(doc)
    deployment = docs[-1]
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    command = container["command"]
    assert command[:3] == ["prefect", "worker", "start"]
    assert command[command.index("--pool") + 1] == "seg2change-k8s"
    assert pod["spec"]["serviceAccountName"] == docs[0]["metadata"]["name"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PREFECT_API_URL"].endswith("/api")


def _fill(value: Any, variables: dict[str, Any]) -> Any:
    """Fill ``{{ name }}`` placeholders as Prefect does: a whole-string one takes the value itself."""
    if isinstance(value, dict):
        return {k: _fill(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, variables) for v in value]
    if isinstance(value, str):
        match = re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", value)
        if match:
            return variables[match.group(1)]
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: str(variables[m.group(1)]), value)
    return value


def test_work_pool_template_references_only_declared_variables_and_renders_a_valid_job() -> None:
    template = json.loads((INFRA / "k8s" / "work-pool.json").read_text())
    assert set(template) == {"job_configuration", "variables"}
    props = template["variables"]["properties"]
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(template["job_configuration"])))
    assert used <= set(props), used - set(props)
    samples = {
        name: prop.get(
            "default", {"string": "sample", "integer": 60, "boolean": True, "object": {}}[prop["type"]]
        )
        for name, prop in props.items()
    }
    samples.update(name="seg2change-run", command=["prefect", "flow-run", "execute"], labels={"a": "b"})
    job = _fill(template["job_configuration"]["job_manifest"], samples)
    metadata = dict(job["metadata"])
    job["metadata"] = {**metadata, "name": metadata.pop("generateName") + "abc"}
    _k8s_validate(job)
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "prefect-worker"


# --- SLURM ------------------------------------------------------------------------------------


@pytest.fixture
def jobqueue_config() -> Any:
    pytest.importorskip("dask_jobqueue", reason="pip install dask-jobqueue==0.9.0")
    config = yaml.safe_load((INFRA / "slurm" / "jobqueue.yaml").read_text())
    # as a config file does: merged over dask-jobqueue's defaults, key by key
    with dask.config.set({f"jobqueue.slurm.{k}": v for k, v in config["jobqueue"]["slurm"].items()}):
        yield config


def test_jobqueue_yaml_keys_are_known_to_dask_jobqueue(jobqueue_config: dict[str, Any]) -> None:
    import dask_jobqueue

    defaults = yaml.safe_load((Path(dask_jobqueue.__file__).parent / "jobqueue.yaml").read_text())
    unknown = set(jobqueue_config["jobqueue"]["slurm"]) - set(defaults["jobqueue"]["slurm"])
    assert not unknown, f"keys dask-jobqueue does not read: {unknown}"


def test_slurm_job_script_from_the_config_file(jobqueue_config: dict[str, Any]) -> None:
    built = build_cluster({"kind": "slurm"}, start=False)
    assert built.cluster is None and built.job_script is not None
    script = built.job_script
    lines = script.splitlines()
    assert "#SBATCH --gres=gpu:1" in lines
    assert "#SBATCH -p gpu" in lines
    assert "#SBATCH --cpus-per-task=8" in lines
    assert "#SBATCH -t 04:00:00" in lines
    assert 'source "${SEG2CHANGE_VENV:-$HOME/seg2change/.venv}/bin/activate"' in lines
    worker = next(line for line in lines if "distributed.cli.dask_worker" in line)
    assert PLACEHOLDER_SCHEDULER in worker and "--resources GPU=1" in worker and "--nthreads 8" in worker


def test_slurm_gpu_spec_overrides_without_duplicating(jobqueue_config: dict[str, Any]) -> None:
    spec = {"kind": "slurm", "gpu": True, "gpus_per_job": 2, "processes": 2, "cores": 16, "memory": "128GiB"}
    script = build_cluster(spec, start=False).job_script
    assert script is not None
    assert script.count("--gres=") == 1 and "#SBATCH --gres=gpu:2" in script
    worker = next(line for line in script.splitlines() if "dask_worker" in line)
    assert worker.count("--resources") == 1 and "--resources GPU=1" in worker and "--nworkers 2" in worker
    assert "#SBATCH --mem=" in script


def test_slurm_pages_are_closed_whatever_the_config_says(jobqueue_config: dict[str, Any]) -> None:
    assert jobqueue_config["jobqueue"]["slurm"]["scheduler-options"]["dashboard_address"].startswith(
        "127.0.0.1:"
    )
    opened = {"jobqueue.slurm.worker-extra-args": ["--dashboard", "--dashboard-address", ":8789"]}
    with dask.config.set({"jobqueue.slurm.scheduler-options": {"dashboard_address": ":8787", "port": 8786}}):
        with dask.config.set(opened):
            built = build_cluster({"kind": "slurm"}, start=False)
        asked = build_cluster({"kind": "slurm", "dashboard": "127.0.0.1:8787"}, start=False)
    assert built.config["scheduler_options"] == {
        "port": 8786,
        "dashboard_address": "127.0.0.1:0",
        "dashboard": False,
    }
    assert asked.config["scheduler_options"]["dashboard_address"] == "127.0.0.1:8787"
    assert asked.config["scheduler_options"]["dashboard"] is True
    assert built.job_script is not None
    worker = next(line for line in built.job_script.splitlines() if "dask_worker" in line)
    assert worker.count("dashboard") == 2 and "--no-dashboard --dashboard-address 127.0.0.1:0" in worker
    # the job's own worker arguments come last, and win
    own = build_cluster({"kind": "slurm", "worker_extra_args": ["--dashboard-address", ":8789"]}).job_script
    assert own is not None and own.endswith("--dashboard-address 127.0.0.1:0 --dashboard-address :8789\n")


def test_kubernetes_pods_serve_health_alone_unless_the_dashboard_is_asked() -> None:
    for dashboard in (False, True):
        manifest = render_daskcluster(KubernetesBackend(dashboard=dashboard, env={"A": "1"}))
        for component in ("scheduler", "worker"):
            (container,) = manifest["spec"][component]["spec"]["containers"]
            env = {e["name"]: e["value"] for e in container["env"]}
            routes = f"DASK_DISTRIBUTED__{component.upper()}__HTTP__ROUTES"
            assert env.pop(routes, None) == (None if dashboard else '["distributed.http.health"]')
            assert env == {"A": "1"}
            assert ("--dashboard" if dashboard else "--no-dashboard") in container["args"]
        ports = manifest["spec"]["scheduler"]["service"]["ports"]
        assert {p["name"] for p in ports} == {"tcp-comm", "http-dashboard"}  # dask-kubernetes looks both up


def test_slurm_without_cores_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("dask_jobqueue", reason="pip install dask-jobqueue==0.9.0")
    with pytest.raises(ClusterError, match="give cores and memory"):
        build_cluster({"kind": "slurm"}, start=False)


def test_missing_dask_jobqueue_names_the_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # import fails
    with pytest.raises(ClusterError, match=r"pip install 'dask-jobqueue"):
        build_cluster({"kind": "slurm", "cores": 4, "memory": "8GiB"}, start=False)


# --- back-end specs ---------------------------------------------------------------------------


def test_local_and_address_backends_render_without_starting() -> None:
    local = build_cluster({"kind": "local", "n_workers": 3})
    assert local.cluster is None and local.config["n_workers"] == 3 and local.config["processes"] is False
    address = build_cluster({"kind": "address", "address": "tcp://10.0.0.5:8786", "gpu": True})
    assert address.address == "tcp://10.0.0.5:8786" and address.config["gpu"] is True


def test_kubernetes_backend_without_gpu_has_no_gpu_request() -> None:
    manifest = render_daskcluster(KubernetesBackend(name="cpu-only", n_workers=5))
    (worker,) = manifest["spec"]["worker"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in worker["resources"]["limits"] and "--resources" not in worker["args"]
    assert manifest["spec"]["worker"]["replicas"] == 5
    _k8s_validate(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "x"},
            "spec": manifest["spec"]["worker"]["spec"],
        }
    )


def test_starting_kubernetes_without_dask_kubernetes_names_the_pip_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "dask_kubernetes", None)
    monkeypatch.setitem(sys.modules, "dask_kubernetes.operator", None)
    with pytest.raises(ClusterError, match=r"pip install 'dask-kubernetes"):
        build_cluster({"kind": "kubernetes"}, start=True)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "yarn"}, "kind must be one of local, address, slurm, kubernetes"),
        ({"kind": "slurm", "queues": "gpu"}, "queues: is not a known field"),
        ({"kind": "address", "address": "10.0.0.5"}, "give e.g. 'tcp://10.0.0.5:8786'"),
        ({"kind": "kubernetes", "name": "Seg_2"}, "not a Kubernetes resource name"),
        ({"kind": "slurm", "gres": "gpu:a100:1"}, "set gpu: true or drop gres"),
        ({"kind": "slurm", "gpu": True, "processes": 2}, "set processes to at most gpus_per_job"),
        ({"kind": "slurm", "dashboard": "8787"}, "give e.g. '127.0.0.1:8787'"),
        ({"kind": "kubernetes", "dashboard": "127.0.0.1:8787"}, "give dashboard: true"),
    ],
)
def test_invalid_backend_specs_name_the_fix(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(JobSpecError, match=re.escape(message)):
        parse_backend(fields)


def test_specs_round_trip_through_json() -> None:
    spec = SlurmBackend(gpu=True, cores=8, memory="64GiB", job_script_prologue=("module load cuda",))
    assert parse_backend(json.loads(spec.model_dump_json())) == spec


# --- a job's cluster --------------------------------------------------------------------------

JOB = {
    "aoi": {"bbox": [13.0, 52.0, 13.05, 52.03]},
    "before": "2024-05-01/2024-05-31",
    "after": "2024-07-01/2024-07-31",
    "catalog": "http://127.0.0.1:9/",
    "collections": ["s2"],
    "output": "/tmp/seg2change-test-out",
}


def test_a_job_with_kind_slurm_renders_its_jobqueue_job_without_submitting_it() -> None:
    pytest.importorskip("dask_jobqueue", reason="pip install dask-jobqueue==0.9.0")
    cluster = yaml.safe_load(
        "{kind: slurm, queue: gpu, cores: 4, memory: 8GiB, gpu: true, jobs: 2, torch_threads: 2}"
    )
    job = JobSpec.build(**JOB, cluster=cluster)
    assert job.cluster.kind == "slurm" and job.cluster.gpu and job.cluster.torch_threads == 2
    backend = job.cluster.backend
    assert isinstance(backend, SlurmBackend) and backend.gpu and backend.jobs == 2
    built = build_cluster(backend, start=False)
    assert built.cluster is None and built.config["queue"] == "gpu" and built.config["cores"] == 4
    assert built.job_script is not None
    lines = built.job_script.splitlines()
    assert "#SBATCH -p gpu" in lines and "#SBATCH --gres=gpu:1" in lines
    worker = next(line for line in lines if "dask_worker" in line)
    assert "--resources GPU=1" in worker and "--nthreads 4" in worker


def test_a_job_with_kind_kubernetes_holds_the_manifest_of_its_daskcluster() -> None:
    job = JobSpec.build(**JOB, cluster={"kind": "kubernetes", "name": "run-7", "n_workers": 3})
    assert isinstance(job.cluster.backend, KubernetesBackend)
    manifest = build_cluster(job.cluster.backend).config
    assert manifest["metadata"]["name"] == "run-7" and manifest["spec"]["worker"]["replicas"] == 3


def test_a_job_with_a_launched_cluster_round_trips_through_json() -> None:
    job = JobSpec.build(**JOB, cluster={"kind": "slurm", "cores": 8, "memory": "64GiB", "gpu": True})
    again = JobSpec.model_validate(json.loads(job.model_dump_json()))
    assert again == job and again.cluster.backend == job.cluster.backend


def test_local_and_address_kinds_keep_the_cluster_spec_they_had() -> None:
    assert ClusterSpec().backend is None and ClusterSpec().kind is None
    local = ClusterSpec.build(kind="local", n_workers=2, processes=True)
    assert local.backend is None and local.local_layout(8) == (2, 1)
    address = ClusterSpec.build(kind="address", address="tcp://10.0.0.5:8786")
    assert address.address == "tcp://10.0.0.5:8786"


@pytest.mark.parametrize(
    ("cluster", "message"),
    [
        ({"kind": "slurm", "n_workers": 3}, "n_workers: is not a known field"),
        ({"kind": "slurm", "queues": "gpu"}, "queues: is not a known field"),
        ({"kind": "kubernetes", "name": "Run_7"}, "not a Kubernetes resource name"),
        ({"kind": "address"}, "kind address needs the scheduler address"),
        ({"kind": "local", "address": "tcp://10.0.0.5:8786"}, "kind local takes no address"),
        ({"kind": "yarn"}, "cluster.kind: Input should be 'local', 'address', 'slurm' or 'kubernetes'"),
        (
            {"kind": "slurm", "backend": {"kind": "slurm"}, "n_workers": 2},
            "n_workers apply to kind local or address only",
        ),
        ({"backend": {"kind": "slurm"}}, "backend applies to kind slurm or kubernetes only"),
    ],
)
def test_invalid_job_clusters_name_the_fix(cluster: dict[str, Any], message: str) -> None:
    with pytest.raises(JobSpecError, match=re.escape(message)):
        JobSpec.build(**JOB, cluster=cluster)


def test_the_readme_deploy_section_shows_job_clusters_that_validate() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Deploy beyond one machine", 1)[1].split("\n## ", 1)[0]
    examples = [e for e in re.findall(r"`cluster: (\{[^}`]+\})`", section) if "..." not in e]
    clusters = [JobSpec.build(**JOB, cluster=yaml.safe_load(e)).cluster for e in examples]
    assert {c.kind for c in clusters} == {"kubernetes", "slurm", None}  # None: an address
    slurm = next(c.backend for c in clusters if isinstance(c.backend, SlurmBackend))
    assert slurm.gpu and slurm.jobs == 4 and slurm.dashboard is None
    assert "dashboard: 127.0.0.1:8787" in section and "dashboard: true" in section


# --- compose ----------------------------------------------------------------------------------


def _pins(path: Path) -> dict[str, str]:
    return {
        k.lower(): v
        for k, v in (line.split("==", 1) for line in path.read_text().splitlines() if "==" in line)
    }


def test_compose_file_structure() -> None:
    compose = yaml.safe_load((INFRA / "compose" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {
        "prefect-server",
        "dask-scheduler",
        "dask-worker-1",
        "dask-worker-2",
        "pgstac",
        "stac-api",
    }
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), (name, image)
        for dep in service.get("depends_on", {}):
            assert dep in services, (name, dep)
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
    for volume in [v.split(":")[0] for s in services.values() for v in s.get("volumes", [])]:
        assert volume.startswith(".") or volume in compose["volumes"], volume
    for worker in ("dask-worker-1", "dask-worker-2"):
        command = services[worker]["command"]
        assert command[:3] == ["dask", "worker", "tcp://dask-scheduler:8786"]
        assert services[worker]["depends_on"]["dask-scheduler"]["condition"] == "service_healthy"
    assert services["dask-worker-1"]["image"] == services["dask-scheduler"]["image"]  # merged anchor
    assert "8786" in " ".join(services["dask-scheduler"]["command"])
    # image versions follow the project's pins
    constraints = _pins(REPO / "requirements" / "constraints.txt")
    assert (
        services["prefect-server"]["image"].split(":")[1].startswith(constraints["prefect"] + "-python3.11")
    )
    pgstac = _pins(REPO / "requirements" / "pgstac.txt")
    assert services["pgstac"]["image"].endswith(":v" + pgstac["pypgstac"])
    assert services["stac-api"]["image"].endswith(":" + pgstac["stac-fastapi-pgstac"])
    api_env = services["stac-api"]["environment"]
    assert api_env["POSTGRES_HOST_READER"] == "pgstac" and "pgstac" in services["stac-api"]["depends_on"]
    assert api_env["POSTGRES_PASS"] == services["pgstac"]["environment"]["POSTGRES_PASSWORD"]
