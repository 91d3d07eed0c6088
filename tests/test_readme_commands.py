"""Every command of the README's bash blocks is run by a test, or exempt for a stated reason.

:data:`COVERAGE` maps each command (a regular expression that matches it whole) to the test that
runs it elsewhere, to a test of this module that runs it as written (with only size and time
options added, tiny generated data where it names ``$D`` or ``data/``, and its outputs in a
temporary folder), or to the reason it cannot run here. A command in none of them, or in several,
fails :func:`test_every_readme_command_is_covered_once`, so that no new command goes untested
silently.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin
from readme import readme_commands

from seg2change_core.datasets import OSCD_BANDS, S2_BAND_IDS, S2_RESOLUTION

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
SEG2CHANGE = REPO / ".venv" / "bin" / "seg2change"
THIS = "test_readme_commands.py"


@dataclass(frozen=True)
class Coverage:
    """How one README command is tested: by test nodes (``path::name`` under tests/), or not, and why."""

    tests: tuple[str, ...] = ()
    exempt: str = ""


def by(*tests: str) -> Coverage:
    """Run by these test nodes (``path::function`` relative to tests/)."""
    return Coverage(tests=tests)


def exempt(reason: str) -> Coverage:
    """Not run by any test, for ``reason``."""
    return Coverage(exempt=reason)


_SETUP = "infra/test_setup_failure.py::test_setup_fails_naming_the_step_and_stamps_nothing"
_SERVER = "flows/test_prefect_server.py::test_response_deployment_on_a_real_server"
_JOPLIN = "flows/test_respond_own_imagery.py::test_catalog_then_respond_on_joplin_gives_cube_cogs_and_per_building_table"
_PUBLIC = (
    "it asks a public STAC API on the internet, which tests never call (its options are parsed by "
    f"{THIS}::test_every_seg2change_command_parses)"
)

#: README command (a regular expression matching it whole) -> how it is tested.
COVERAGE: dict[str, Coverage] = {
    r"bash \.ci/setup && \.venv/bin/seg2change demo": by(_SETUP, f"{THIS}::test_the_demo_command"),
    r"bash \.ci/setup && \.venv/bin/python -m pytest": exempt(
        "the whole suite: .ci/run runs it in CI after the set-up, which " + _SETUP + " runs"
    ),
    r"\.venv/bin/python -m pip install --index-url https://download\.pytorch\.org/whl/cu126 .*": exempt(
        "installs a CUDA build of torch for a GPU; the index and pinned version it names are held by "
        "infra/test_setup_gpu_docs.py::test_the_cuda_install_asks_for_the_pinned_version_from_the_matching_index"
    ),
    r"\.venv/bin/python -c \"import torch; .*": by(
        "infra/test_setup_gpu_docs.py::test_the_check_command_prints_this_venvs_torch"
    ),
    r"grep -v '\^torch==' requirements/constraints\.txt > \.venv/constraints-gpu\.txt": by(
        "infra/test_setup_gpu_docs.py::test_the_grep_makes_constraints_without_torch_only"
    ),
    r"seg2change discover examples/earth-search-s2\.yaml": exempt(
        _PUBLIC + "; test_readme_examples.py validates the job and its asset keys, and "
        "pipeline/test_discover.py discovers on a local STAC API"
    ),
    r"seg2change run examples/earth-search-s2\.yaml": exempt(
        _PUBLIC + "; the same job kind runs on a local signed catalog in "
        "pipeline/test_signed_catalog_run.py::test_a_signed_catalog_is_read_through_its_signed_hrefs_only"
    ),
    r"seg2change sequence berlin-monthly\.yaml": exempt(
        _PUBLIC + "; flows/test_cli_sequence.py::test_sequence_command_runs_then_appends_only_the_new_pair "
        "runs the command on a generated sequence, and "
        "pipeline/test_sequence_spec.py::test_the_readme_sequence_file_validates validates the README's file"
    ),
    r"D=\.\./shared/data/change_detection": by(
        f"{THIS}::test_the_rgb_recipe_commands",
        f"{THIS}::test_the_sentinel2_recipe_commands",
        f"{THIS}::test_the_dinov2_recipe_command",
    ),
    r"\.venv/bin/seg2change (train|evaluate) \$D/levir_cd \$D/whu_cd .* --split bench/splits/shared_rgb_by_source\.json.*": by(
        f"{THIS}::test_the_rgb_recipe_commands"
    ),
    r"\.venv/bin/seg2change (train|evaluate) \$D/oscd_s2 .*--split bench/splits/oscd_by_city\.json.*": by(
        f"{THIS}::test_the_sentinel2_recipe_commands"
    ),
    r"\.venv/bin/seg2change train \$D/levir_cd --recipe dinov2 .*": by(
        f"{THIS}::test_the_dinov2_recipe_command"
    ),
    r"\.venv/bin/seg2change synthesise-buildings \$J/pre/\*\.tif .*|\.venv/bin/seg2change train .* --extra-train .*": by(
        f"{THIS}::test_the_synthetic_building_commands"
    ),
    r"seg2change evaluate data/\S+ .*--report r\.json": by(f"{THIS}::test_the_scoring_commands"),
    r"seg2change evaluate data/oscd_s2 --model cva-std --bands red,green,blue,nir": by(
        f"{THIS}::test_the_scoring_commands"
    ),
    r"(OMP_NUM_THREADS=1 )?\.venv/bin/python -m pytest -m (unit|\"not e2e\")": exempt(
        "a subset of the whole suite, which .ci/run runs in CI; the layer markers it selects are held by "
        "infra/test_habits.py::test_every_test_module_has_a_layer_and_every_listed_module_exists"
    ),
    r"\. \.venv/bin/activate": exempt("puts .venv/bin on PATH for the Prefect commands after it"),
    r"export PREFECT_HOME=.*|export PREFECT_API_URL=.*": by(_SERVER),
    r"prefect server start --host 127\.0\.0\.1 --port 4200": by(_SERVER),
    r"echo '\{\"zones\": .*\}' > monitoring\.json": by(
        "test_readme_examples.py::test_the_monitoring_inputs_make_one_valid_job_per_region"
    ),
    r"python -m flows\.deploy monitoring\.json": by(
        _SERVER,  # serves both deployments with the default parameters, no file
        "test_readme_examples.py::test_the_monitoring_inputs_make_one_valid_job_per_region",
        "flows/test_deploy_cli.py::test_parameters_that_are_not_an_object_are_refused",
    ),
    r"prefect deployment ls": exempt(
        "Prefect's own listing; the two deployments it shows are read by name from a real server in "
        + _SERVER
    ),
    r"export SEG2CHANGE_HOME=.*": by(
        "test_readme_examples.py::test_the_monitoring_inputs_make_one_valid_job_per_region"
    ),
    r"prefect work-pool create seg2change --type process|prefect deploy --all|prefect worker start --pool seg2change": exempt(
        "a long-running Prefect worker on a server's work pool; prefect.yaml is held equal to flows/deploy.py by "
        "infra/test_habits.py::test_prefect_yaml_and_deploy_py_declare_the_same_deployments"
    ),
    r"seg2change respond .*--catalog https://earth-search\.aws\.element84\.com/v1 .*": exempt(
        _PUBLIC + "; the response flow runs on a generated flood scene in "
        "flows/test_flows.py::test_response_reports_flooded_area"
    ),
    r"prefect deployment run seg2change-response/on-demand .*|prefect event emit seg2change\.event\.reported .*": exempt(
        _PUBLIC + "; the same deployment is started by run_deployment and by this event on a generated "
        "scene in " + _SERVER + ", and the parameters these commands give are validated by the flow in "
        f"{THIS}::test_the_deployment_run_and_event_commands_give_valid_response_parameters"
    ),
    r"seg2change monitor --zones examples/regions\.geojson .*": exempt(
        _PUBLIC + "; the monitoring flow runs on generated scenes in "
        "flows/test_flows.py::test_monitoring_twice_skips_the_second_time"
    ),
    r"J=\.\./shared/data/geo/xview2_joplin|\.venv/bin/seg2change catalog \$J/pre \$J/post .*": by(_JOPLIN),
    r"\.venv/bin/seg2change respond .*--catalog out/joplin/items\.json .*--footprints \$J/.*": by(_JOPLIN),
    r"gdalinfo seg2change-demo/output/cogs/class_after\.tif": by(
        "pipeline/test_outputs_open.py::test_the_readme_gdal_commands_show_colour_tables_categories_and_a_v2_cube"
    ),
}


def _covering(command: str) -> list[str]:
    return [pattern for pattern in COVERAGE if re.fullmatch(pattern, command)]


@pytest.mark.unit
def test_every_readme_command_is_covered_once() -> None:
    commands = readme_commands()
    assert len(commands) > 20
    uncovered = [c for c in commands if not _covering(c)]
    assert not uncovered, f"README commands no test runs: add each to COVERAGE in tests/{THIS}: {uncovered}"
    twice = {c: _covering(c) for c in commands if len(_covering(c)) > 1}
    assert not twice, f"README commands matched by several COVERAGE entries: {twice}"
    stale = [p for p in COVERAGE if not any(re.fullmatch(p, c) for c in commands)]
    assert not stale, f"COVERAGE entries that match no README command any more: {stale}"


@pytest.mark.unit
def test_every_coverage_entry_names_tests_that_exist_or_a_reason() -> None:
    for pattern, coverage in COVERAGE.items():
        assert bool(coverage.tests) != bool(coverage.exempt), pattern
        for node in (*coverage.tests, *re.findall(r"[\w/]+\.py::\w+", coverage.exempt)):
            path, name = node.split("::")
            source = TESTS / path
            assert source.is_file(), f"{pattern}: {node}: no file tests/{path}"
            assert re.search(rf"^def {name}\(", source.read_text(), flags=re.M), f"{pattern}: {node}: no test"


@pytest.mark.unit
def test_the_readme_commands_are_read_whole() -> None:
    text = "```bash\nx 'a #1\n  b'   # note\n# only a comment\ny \\\n  --z  # c\n```\n"
    assert readme_commands(text) == ["x 'a #1 b'", "y    --z"]
    with pytest.raises(ValueError, match="inside a quotation"):
        readme_commands("```bash\necho 'open\n```\n")


def _parse(argv: list[str]) -> dict[str, object]:
    """The options ``seg2change <argv>`` gives its command, as the command line reads them (nothing runs)."""
    import typer.main

    from flows.cli import app

    group = typer.main.get_command(app)
    command = group.get_command(group.make_context("seg2change", list(argv)), argv[0])
    assert command is not None, f"seg2change has no command {argv[0]!r}"
    with command.make_context(argv[0], list(argv[1:])) as context:
        return dict(context.params)


@pytest.mark.unit
def test_every_seg2change_command_parses() -> None:
    """Those that need the network too: each option exists and takes the value given."""
    commands = [shlex.split(c) for c in readme_commands()]
    ours = [argv[1:] for argv in commands if argv[0] in {"seg2change", ".venv/bin/seg2change"}]
    assert {"discover", "run", "train", "evaluate", "respond", "monitor", "catalog"} <= {a[0] for a in ours}
    for argv in ours:
        _parse(argv)
    respond = next(a for a in ours if a[0] == "respond" and "--job-options" in a)
    assert _parse(respond)["event_date"] is not None
    with pytest.raises(Exception, match="--aera") as refused:  # typer's own copy of click's error
        _parse(["respond", "--aera", *respond[2:]])
    assert refused.typename == "NoSuchOption"


@pytest.mark.unit
def test_the_deployment_run_and_event_commands_give_valid_response_parameters() -> None:
    from flows.deploy import RESPONSE_DEPLOYMENT, RESPONSE_EVENT, TRIGGER_PARAMETERS
    from flows.response import response_flow

    run = shlex.split(_command(r"prefect deployment run .*"))
    assert run[3] == RESPONSE_DEPLOYMENT
    pairs = [run[i + 1].split("=", 1) for i, arg in enumerate(run) if arg == "-p"]
    by_run: dict[str, object] = {}
    for key, value in pairs:  # as Prefect reads -p: JSON where it parses, else the string
        try:
            by_run[key] = json.loads(value)
        except json.JSONDecodeError:
            by_run[key] = value
    emit = shlex.split(_command(r"prefect event emit .*"))
    assert emit[3] == RESPONSE_EVENT
    assert re.fullmatch(r"seg2change\.event\.\S+", emit[emit.index("--resource-id") + 1])
    payload = json.loads(emit[emit.index("--payload") + 1])
    required = {name for name, template in TRIGGER_PARAMETERS.items() if ".get(" not in template}
    assert required <= set(payload), f"the event's payload lacks {required - set(payload)}"
    for params in (by_run, payload):
        valid = response_flow.validate_parameters(params)
        assert str(valid["event_date"]) == "2024-06-01" and valid["hazard"] == "flood"


# --- the commands run as written -------------------------------------------------------------------


def _command(pattern: str) -> str:
    return next(c for c in readme_commands() if re.fullmatch(pattern, c))


def _run(command: str, cwd: Path, *extra: str, timeout: float = 240) -> str:
    """Run a README command in ``cwd`` through this checkout's ``seg2change``, plus ``extra`` options.

    ``$D`` (the README's data folder, set by its ``D=...`` line) is ``cwd/D``.
    """
    argv = shlex.split(command)
    assert argv[0] in {"seg2change", ".venv/bin/seg2change"}, command
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    argv = [str(SEG2CHANGE), *(a.replace("$D/", f"{cwd / 'D'}/") for a in argv[1:]), *extra]
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"{command}\n{out}"
    return " ".join(out.split())


def _write(path: Path, data: np.ndarray, *, driver: str = "PNG", resolution: float | None = None) -> None:
    array = data if data.ndim == 3 else data[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": driver, "width": array.shape[2], "height": array.shape[1], "count": array.shape[0]}
    if resolution is not None:
        profile.update(crs="EPSG:32631", transform=from_origin(500000, 4000000, resolution, resolution))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", dtype=array.dtype.name, **profile) as dst:
            dst.write(array)


def _rgb_pair(
    folder: Path, name: str, rng: np.random.Generator, size: int = 28, changed: bool = True
) -> None:
    before = (rng.random((3, size, size)) * 60 + 80).astype(np.uint8)
    after = (before + rng.integers(0, 6, before.shape)).astype(np.uint8)  # re-lit, not identical
    label = np.zeros((size, size), np.uint8)
    if changed:
        y, x = rng.integers(0, size // 2, 2)
        after[:, y : y + size // 3, x : x + size // 3] = 240
        label[y : y + size // 3, x : x + size // 3] = 255
    for part, array in (("A", before), ("B", after), ("label", label)):
        _write(folder / part / f"{name}.png", array)


def _oscd_city(root: Path, city: str, rng: np.random.Generator, size: int = 28) -> None:
    for date in ("imgs_1", "imgs_2"):
        for band in OSCD_BANDS:
            res = S2_RESOLUTION[band]
            side = -(-size * 10 // res)
            data = (1000 + 500 * rng.random((side, side))).astype(np.uint16)
            if date == "imgs_2" and res == 10:
                data[:8] = 5000
            _write(
                root / city / date / f"T_{S2_BAND_IDS[band]}.tif", data, driver="GTiff", resolution=float(res)
            )
    label = np.ones((size, size), np.uint8)
    label[:8] = 2
    _write(root / city / "cm" / f"{city}-cm.tif", label, driver="GTiff")


def _data_of_split(split: Path, root: Path) -> None:
    """Tiny pairs under ``root`` named by every key of the README's split file.

    One pair in eight holds change: the recipes draw more crops from those, and each crop costs.
    """
    rng = np.random.default_rng(0)
    keys = [k for part in ("train", "val", "test") for k in json.loads(split.read_text())[part]]
    for index, key in enumerate(keys):
        dataset, name = key.split("/", 1)
        if dataset == "oscd_s2":
            _oscd_city(root / dataset, name, rng)
        else:
            _rgb_pair(root / dataset, name, rng, changed=index % 8 == 0)


def _workdir(tmp_path: Path) -> Path:
    """A folder that runs the README's repository-relative commands: bench/ as the checkout's."""
    (tmp_path / "bench").symlink_to(REPO / "bench")
    return tmp_path


#: Size and time options added to the training recipes: one epoch of one 28 px crop per pair, on
#: one thread (a step of the recipe's network still costs seconds on a busy CPU).
SMALL = ("--epochs", "1", "--threads", "1", "--batch-size", "16", "--crop-size", "28", "--val-crop", "28")
SMALL += ("--crops-per-image", "1", "--no-augment", "--embed-dim", "8", "--hidden-dim", "8")


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_the_rgb_recipe_commands(tmp_path: Path) -> None:
    """A whole epoch over the 189 pairs its split names: over a minute on two busy vCPUs."""
    cwd = _workdir(tmp_path)
    _data_of_split(REPO / "bench/splits/shared_rgb_by_source.json", cwd / "D")
    trained = _run(_command(r"\.venv/bin/seg2change train \$D/levir_cd \$D/whu_cd .*"), cwd, *SMALL)
    assert "105 training pairs, 22 validation" in trained and "epoch 1: loss" in trained
    assert (cwd / "models" / "rgb.safetensors").is_file()
    evaluate = _command(r"\.venv/bin/seg2change evaluate \$D/levir_cd \$D/whu_cd .*")
    scored = _run(evaluate, cwd, "--no-progress")
    assert "pooled" in scored and all(
        name in scored for name in ("levir_cd", "whu_cd", "dsifn_cd", "egy_bcd")
    )


@pytest.mark.timeout(300)
def test_the_sentinel2_recipe_commands(tmp_path: Path) -> None:
    cwd = _workdir(tmp_path)
    _data_of_split(REPO / "bench/splits/oscd_by_city.json", cwd / "D")
    train = _command(r"\.venv/bin/seg2change train \$D/oscd_s2 .*")
    out = _run(train, cwd, *SMALL)
    assert "epoch 1: loss" in out and (cwd / "models" / "sentinel2.safetensors").is_file()
    out = _run(_command(r"\.venv/bin/seg2change evaluate \$D/oscd_s2 .*"), cwd, "--no-progress")
    assert "oscd_s2" in out and "pooled" in out


@pytest.mark.timeout(300)
def test_the_dinov2_recipe_command(tmp_path: Path) -> None:
    """Official-format weights of the right shapes (random: the official file is a download)."""
    import torch

    from seg2change_core.backbones import build_dinov2

    cwd = _workdir(tmp_path)
    rng = np.random.default_rng(1)
    for name in ("p_1", "p_2", "p_3", "p_4"):
        _rgb_pair(cwd / "D" / "levir_cd", name, rng)
    torch.manual_seed(0)
    torch.save(build_dinov2("dinov2_vits14").state_dict(), cwd / "dinov2_vits14_pretrain.pth")
    train = _command(r"\.venv/bin/seg2change train \$D/levir_cd --recipe dinov2 .*")
    out = _run(train, cwd, "--epochs", "1", "--threads", "1", "--batch-size", "2", "--crop-size", "28")
    assert "epoch 1: loss" in out and (cwd / "models" / "dinov2-levir.safetensors").is_file()


JOPLIN = REPO.parent / "shared" / "data" / "geo" / "xview2_joplin"


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_the_synthetic_building_commands(tmp_path: Path) -> None:
    """The synthesiser on the shared Joplin tiles as written; the training command on tiny pairs.

    The training command's ``synthetic/joplin`` is then three tiny pairs: the real folder's 512 px
    pairs would give a thousand 28 px crops each.
    """
    if not (JOPLIN / "pre").is_dir():
        pytest.skip(f"{JOPLIN} is absent: the shared data folder (../shared/data) holds the Joplin tiles")
    cwd = _workdir(tmp_path)
    images = " ".join(sorted(str(p) for p in (JOPLIN / "pre").glob("*.tif")))
    command = _command(r"\.venv/bin/seg2change synthesise-buildings .*")
    made = _run(command.replace("$J/pre/*.tif", images).replace("$J/", f"{JOPLIN}/"), cwd)
    assert "16 pairs in synthetic/joplin" in made
    assert len(list((cwd / "synthetic" / "joplin" / "label").glob("*.png"))) == 16
    shutil.rmtree(cwd / "synthetic" / "joplin")
    rng = np.random.default_rng(3)
    for name in ("p_1", "p_2", "p_3"):
        _rgb_pair(cwd / "synthetic" / "joplin", name, rng)
    _data_of_split(REPO / "bench/splits/shared_rgb_val_every_set.json", cwd / "D")
    trained = _run(_command(r"\.venv/bin/seg2change train .* --extra-train .*"), cwd, *SMALL)
    assert "104 training pairs, 26 validation" in trained and "epoch 1: loss" in trained
    assert (cwd / "models" / "rgb-joplin.safetensors").is_file()


@pytest.mark.timeout(300)
def test_the_scoring_commands(tmp_path: Path) -> None:
    """With an rgb checkpoint trained on four pairs as ``model.safetensors``, on tiny data of each folder named."""
    rng = np.random.default_rng(2)
    scored = _command(r"seg2change evaluate data/\S+ .*--report r\.json")
    folders = [a.split("/", 1)[1] for a in shlex.split(scored) if a.startswith("data/")]
    picked = _command(r"seg2change evaluate data/oscd_s2 --model cva-std .*")
    for dataset in {*folders, "oscd_s2"}:
        for name in ("bercy", "paris"):
            if dataset == "oscd_s2":
                _oscd_city(tmp_path / "data" / dataset, name, rng)
            else:
                _rgb_pair(tmp_path / "data" / dataset, name, rng)
    for name in ("p_1", "p_2", "p_3", "p_4"):
        _rgb_pair(tmp_path / "train" / "levir_cd", name, rng)
    _run(f"seg2change train {tmp_path / 'train' / 'levir_cd'} --out model.safetensors", tmp_path, *SMALL)
    out = _run(scored, tmp_path, "--no-progress")
    report = json.loads((tmp_path / "r.json").read_text())
    assert [row["dataset"] for row in report["datasets"]] == folders
    assert "pooled" in out and "IoU ratio" in out
    out = _run(picked, tmp_path, "--no-progress")
    assert "oscd_s2" in out and "pooled" in out


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_the_demo_command(tmp_path: Path) -> None:
    """The README's first command after its set-up part, on a 256 px scene."""
    demo = _command(r"bash \.ci/setup && \.venv/bin/seg2change demo").split(" && ", 1)[1]
    out = _run(demo, tmp_path, "--size", "256", "--no-progress")
    assert (tmp_path / "seg2change-demo" / "output" / "cogs" / "class_after.tif").is_file()
    assert "change map against the generated truth: IoU" in out and "class_after.tif" in out
