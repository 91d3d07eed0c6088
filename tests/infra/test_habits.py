"""The project's habits hold: one version, strict checks in CI, licence, changelog, test layers, deployments.

* The version is written once, in ``pyproject.toml``; Python reads the installed metadata and every
  image tag in ``infra/`` (and the README's build command) names the same version.
* ``.ci/run`` runs ruff (lint and format) and mypy before pytest and stops at the first finding;
  mypy is strict, relaxed only by explicit per-module overrides.
* ``LICENSE`` is the Apache-2.0 text that ``pyproject.toml`` names; ``CHANGELOG.md`` keeps an
  *Unreleased* section in Keep a Changelog form.
* Every test module falls in one layer (``unit``, ``integration``, ``e2e``; ``tests/conftest.py``).
* ``prefect.yaml`` and ``flows/deploy.py`` declare the same deployments.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import os
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import FOLDER_LAYERS, LAYERS, MODULE_LAYERS, TESTS, layer_of

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
PACKAGES = ("seg2change_core", "pipeline", "flows")
#: The project's container images (infra/docker/Dockerfile.<name without "seg2change-">).
IMAGE = re.compile(r"(?<![\w.-])(seg2change-(?:cpu|gpu-worker))(?::([\w.+-]+))?")
#: Files that name a project image with a tag; each must name it with the project's version.
TAGGED_FILES = {
    "README.md",
    "infra/compose/compose.yaml",
    "infra/docker/Dockerfile.cpu",
    "infra/docker/Dockerfile.gpu-worker",
    "infra/k8s/daskcluster.yaml",
    "infra/k8s/prefect-worker.yaml",
    "infra/k8s/work-pool.json",
}
#: SHA-256 of the Apache License 2.0 text as the ASF publishes it (LICENSE-2.0.txt).
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


# --- version ---------------------------------------------------------------------------------


def test_the_installed_version_is_pyproject_s_and_python_reads_it() -> None:
    import pipeline
    import seg2change_core
    from pipeline.cluster_backends import DEFAULT_IMAGE

    installed = importlib.metadata.version("seg2change")
    assert installed == VERSION, (
        f"the installed metadata says {installed}, pyproject.toml {VERSION}: reinstall with "
        ".venv/bin/pip install -e . --no-deps"
    )
    assert seg2change_core.__version__ == pipeline.__version__ == VERSION
    assert DEFAULT_IMAGE.endswith(f"seg2change-gpu-worker:{VERSION}")


def test_no_python_module_spells_the_version() -> None:
    literal = re.compile(rf"""["']{re.escape(VERSION)}["']""")
    found = [
        f"{path.relative_to(REPO)}:{number}"
        for folder in (*PACKAGES, "bench")
        for path in sorted((REPO / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if literal.search(line)
    ]
    assert not found, f"write seg2change_core.__version__ instead of the literal {VERSION!r}: {found}"


def test_every_image_tag_is_the_project_version() -> None:
    tagged: dict[str, set[str]] = {}
    for path in sorted([REPO / "README.md", *(p for p in (REPO / "infra").rglob("*") if p.is_file())]):
        for match in IMAGE.finditer(path.read_text()):
            if match.group(2) is not None:
                tagged.setdefault(path.relative_to(REPO).as_posix(), set()).add(match.group(2))
    assert set(tagged) >= TAGGED_FILES, f"no tagged project image in {sorted(TAGGED_FILES - set(tagged))}"
    wrong = {name: tags for name, tags in tagged.items() if tags != {VERSION}}
    assert not wrong, f"image tags must be the project version {VERSION} (pyproject.toml): {wrong}"


def test_the_image_pattern_finds_tags_and_leaves_other_names() -> None:
    text = "docker build -f infra/docker/Dockerfile.cpu -t seg2change-cpu:9.9.9 .\nimage: x/seg2change-gpu-worker"
    assert [m.groups() for m in IMAGE.finditer(text)] == [
        ("seg2change-cpu", "9.9.9"),
        ("seg2change-gpu-worker", None),
    ]
    assert not list(IMAGE.finditer("seg2change-scheduler seg2change-demo my-seg2change-cpu"))


# --- checks in CI ----------------------------------------------------------------------------

_FAKE_TOOL = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$CI_LOG"
if [ -n "${CI_FAIL:-}" ] && [[ "$(basename "$0") $*" == "$CI_FAIL"* ]]; then exit 3; fi
"""


def _run_ci(tmp_path: Path, fail: str = "") -> tuple[int, list[str]]:
    """Run a copy of .ci/run whose set-up and tools only log their calls; ``fail`` names one that fails."""
    (tmp_path / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "run", tmp_path / ".ci" / "run")
    (tmp_path / ".ci" / "setup").write_text('echo "setup" >> "$CI_LOG"\n')
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    for tool in ("ruff", "mypy", "python"):
        script = tmp_path / ".venv" / "bin" / tool
        script.write_text(_FAKE_TOOL)
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "calls.log"
    env = {**os.environ, "CI_LOG": str(log), "CI_FAIL": fail}
    done = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], env=env, capture_output=True, check=False)
    return done.returncode, log.read_text().splitlines()


@pytest.mark.integration
def test_ci_lints_formats_and_type_checks_before_the_tests(tmp_path: Path) -> None:
    code, calls = _run_ci(tmp_path / "ok")
    assert code == 0
    assert calls == [
        "setup",
        "ruff check .",
        "ruff format --check .",
        "mypy pipeline flows seg2change_core bench",
        "python -m pytest",
    ]
    for step, ran in (("ruff check", 2), ("ruff format", 3), ("mypy", 4)):
        code, calls = _run_ci(tmp_path / step.replace(" ", "-"), fail=step)
        assert code != 0, f".ci/run passed although {step} failed"
        assert len(calls) == ran and not any(call.startswith("python") for call in calls), calls


def test_mypy_is_strict_and_relaxed_only_where_listed() -> None:
    config = PYPROJECT["tool"]["mypy"]
    assert config["strict"] is True
    assert "ignore_missing_imports" not in config, "name the untyped libraries in an override instead"
    changelog = (REPO / "CHANGELOG.md").read_text()
    for override in config["overrides"]:
        modules = override["module"] if isinstance(override["module"], list) else [override["module"]]
        ours = [m for m in modules if m.split(".")[0] in PACKAGES]
        if override.get("ignore_missing_imports"):
            assert not ours, f"ignore_missing_imports is for untyped libraries, not {ours}"
        for module in ours:
            path = REPO / module.replace(".", "/")
            assert path.with_suffix(".py").is_file() or path.is_dir(), f"override names no module: {module}"
            assert f"`{module}`" in changelog, f"CHANGELOG.md must name {module} as not yet strict"


def test_license_is_the_apache_2_text_pyproject_names() -> None:
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    text = (REPO / "LICENSE").read_bytes()
    assert hashlib.sha256(text).hexdigest() == APACHE_2_SHA256, "LICENSE differs from the Apache-2.0 text"


def test_changelog_has_an_unreleased_section_in_keep_a_changelog_form() -> None:
    text = (REPO / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## \[(.+?)\]", text, flags=re.MULTILINE)
    assert releases and releases[0] == "Unreleased"
    kinds = set(re.findall(r"^### (.+)$", text, flags=re.MULTILINE))
    assert kinds and kinds <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, kinds


# --- test layers -----------------------------------------------------------------------------


def test_every_layer_is_a_registered_marker() -> None:
    registered = {line.split(":")[0] for line in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"]}
    assert set(LAYERS) <= registered
    assert "--strict-markers" in PYPROJECT["tool"]["pytest"]["ini_options"]["addopts"]


def test_every_test_module_has_a_layer_and_every_listed_module_exists() -> None:
    modules = sorted(p.relative_to(TESTS).as_posix() for p in TESTS.rglob("test_*.py"))
    assert {layer_of(module) for module in modules} == set(LAYERS)
    missing = sorted(set(MODULE_LAYERS) - set(modules))
    assert not missing, f"tests/conftest.py MODULE_LAYERS names modules that are gone: {missing}"
    assert set(MODULE_LAYERS.values()) | set(FOLDER_LAYERS.values()) <= set(LAYERS)


def test_layers_follow_module_fixture_mark_and_folder() -> None:
    assert layer_of("core/test_metrics.py") == "unit"
    assert layer_of("core/test_oscd.py", fixtures=frozenset({"tmp_path", "shared_data"})) == "integration"
    assert layer_of("pipeline/test_spec.py", marks=frozenset({"pgstac"})) == "integration"
    assert layer_of("pipeline/test_demo.py") == "e2e"
    assert layer_of("infra/test_dockerfiles.py") == "integration"
    with pytest.raises(ValueError, match="FOLDER_LAYERS"):
        layer_of("newfolder/test_x.py")


def test_unit_modules_start_no_cluster_server_or_process() -> None:
    """A module that is ``unit`` by its folder alone must not look like it starts anything."""
    starts = re.compile(
        r"subprocess|Popen|LocalCluster|Client\(|serve_collection|prefect_test_harness|fake_stac_api"
    )
    suspicious = [
        module
        for path in sorted(TESTS.rglob("test_*.py"))
        if (module := path.relative_to(TESTS).as_posix()) not in MODULE_LAYERS
        and layer_of(module) == "unit"
        and starts.search(path.read_text())
    ]
    assert not suspicious, f"list these in MODULE_LAYERS of tests/conftest.py as integration: {suspicious}"


def test_this_test_carries_one_layer(request: pytest.FixtureRequest) -> None:
    assert [m.name for m in request.node.iter_markers() if m.name in LAYERS] == ["unit"]


# --- deployments -----------------------------------------------------------------------------


def _flow_parameters(entrypoint: str) -> dict[str, inspect.Parameter]:
    module, name = entrypoint.split(":")
    flow = getattr(__import__(module.removesuffix(".py").replace("/", "."), fromlist=[name]), name)
    return dict(inspect.signature(flow.fn).parameters)


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def test_prefect_yaml_and_deploy_py_declare_the_same_deployments(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    from flows import deploy

    declared = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    monitoring_params = {
        k: v for k, v in declared["monthly"]["parameters"].items() if not _is_template(v)
    } | {"zones": "regions.geojson", "base_job": "base-job.yaml"}
    built = {d.name: d for d in deploy.deployments(monitoring_params)}
    assert set(built) == set(declared)
    assert {f"{d.flow_name}/{d.name}" for d in built.values()} == {
        deploy.MONITORING_DEPLOYMENT,
        deploy.RESPONSE_DEPLOYMENT,
    }
    for name, spec in declared.items():
        ours = built[name]
        assert ours.entrypoint == spec["entrypoint"], name
        assert ours.description == spec["description"], name
        assert list(ours.tags) == spec["tags"], name
        flow_parameters = _flow_parameters(spec["entrypoint"])
        unknown = set(spec.get("parameters", {})) - set(flow_parameters)
        assert not unknown, f"prefect.yaml gives {name} parameters its flow does not take: {unknown}"
        for key, value in spec.get("parameters", {}).items():
            if _is_template(value):
                continue
            default = flow_parameters[key].default
            assert ours.parameters.get(key, default) == value, (name, key)
        schedules = [
            (s["cron"], s.get("timezone", "UTC"), s.get("active", True)) for s in spec.get("schedules", [])
        ]
        # Prefect runs a cron schedule without a timezone in UTC.
        assert [
            (s.schedule.cron, s.schedule.timezone or "UTC", s.active) for s in ours.schedules
        ] == schedules
        triggers = [
            (t["name"], set(t["expect"]), t["match"], t["parameters"], t.get("enabled", True))
            for t in spec.get("triggers", [])
        ]
        assert [
            (t.name, set(t.expect), dict(t.match.root), t.parameters, t.enabled) for t in ours.triggers
        ] == triggers, name
        assert ours.paused is spec.get("paused", False), name
    assert declared["monthly"]["schedules"][0]["cron"] == deploy.MONITORING_CRON
