"""The notebooks in ``notebooks/``: they run against a fresh demo run, and are committed clean.

Each notebook is executed with nbmake in a child pytest (on a copy, whose outputs are then read),
with ``SEG2CHANGE_OUTPUT`` and ``SEG2CHANGE_TRUTH`` pointing at the outputs of a small demo run
made once for this module, and ``SEG2CHANGE_S3_URI`` with the ``AWS_*`` variables pointing at
a copy of those outputs in a SeaweedFS bucket on 127.0.0.1, which the first notebook opens through
fsspec. The sequence notebook runs against a small hand-made sequence cube
(``tests/pipeline/sequence_cubes.py``) with its COGs and quick-looks, through ``SEG2CHANGE_SEQUENCE``.
The committed notebooks must carry no outputs or execution counts and must equal what
``notebooks/make_notebooks.py`` writes, so that they are only ever changed through the script.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
#: The notebooks that open a job's outputs (run against the demo).
DEMO_NAMES = ("01_open_change_cube.ipynb", "02_stac_item.ipynb", "03_evaluate_against_truth.ipynb")
#: The sequence notebook (run against a small sequence cube, tests/pipeline/sequence_cubes.py).
SEQUENCE_NAME = "04_sequence.ipynb"
NAMES = (*DEMO_NAMES, SEQUENCE_NAME)


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _maker() -> ModuleType:
    return _load("make_notebooks", NOTEBOOKS / "make_notebooks.py")


def _run_notebook(name: str, env: dict[str, str], tmp_path: Path) -> str:
    """Execute a copy of ``name`` with nbmake in a child pytest; return what its code cells printed."""
    env = {**os.environ, **env}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    notebook = (
        tmp_path / name
    )  # run a copy, so that its outputs can be read and the committed one stays clean
    shutil.copyfile(NOTEBOOKS / name, notebook)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbmake",
            "--nbmake-timeout=300",
            "--overwrite",
            "-p",
            "no:cacheprovider",
            "-q",
            str(notebook),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{name} failed (rc={proc.returncode}):\n{output[-6000:]}"
    return "".join(
        out.get("text", "")
        for cell in nbformat.read(notebook, as_version=4).cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )


@pytest.fixture(scope="module")
def demo_outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Run the demo once on a small scene; return the notebooks' environment variables."""
    from pipeline.demo import run_demo

    workdir = tmp_path_factory.mktemp("notebooks") / "demo"
    result = run_demo(workdir, size=256, progress=False)
    return {
        "SEG2CHANGE_OUTPUT": str(result.run.inference.path.parent),
        "SEG2CHANGE_TRUTH": str(result.scene.truth_change),
        "IPYTHONDIR": str(workdir.parent / "ipython"),  # keep the kernel's history out of $HOME
    }


@pytest.fixture(scope="module")
def object_store_outputs(demo_outputs: dict[str, str], weed: Path) -> Iterator[dict[str, str]]:
    """The demo's outputs copied into a SeaweedFS bucket on 127.0.0.1; the notebooks' S3 variables."""
    import s3fs

    from pipeline.object_store import SeaweedServer

    with SeaweedServer(bucket="notebooks") as store:
        fs = s3fs.S3FileSystem(**store.storage_options, use_listings_cache=False)
        cube = Path(demo_outputs["SEG2CHANGE_OUTPUT"]) / "change_cube.zarr"
        fs.put(str(cube), "notebooks/demo/output/change_cube.zarr", recursive=True)
        assert fs.isfile("notebooks/demo/output/change_cube.zarr/zarr.json")
        yield {"SEG2CHANGE_S3_URI": store.url("demo", "output"), **store.env}


@pytest.mark.slow
@pytest.mark.parametrize("name", DEMO_NAMES)
def test_notebook_runs(
    name: str, demo_outputs: dict[str, str], object_store_outputs: dict[str, str], tmp_path: Path
) -> None:
    pytest.importorskip("nbmake")
    printed = _run_notebook(name, {**demo_outputs, **object_store_outputs}, tmp_path)
    if name == "01_open_change_cube.ipynb":
        s3_uri = object_store_outputs["SEG2CHANGE_S3_URI"]
        assert f"the cube in {s3_uri} is the one in" in printed, printed[-3000:]


@pytest.mark.slow
def test_sequence_notebook_runs(tmp_path: Path) -> None:
    """On a small hand-made sequence cube, published (COGs, quick-looks), so every cell has its input."""
    pytest.importorskip("nbmake")
    from pipeline.sequence.cogs import write_date_layer_cogs
    from pipeline.sequence.quicklook import write_sequence_quicklooks

    cubes = _load("sequence_cubes", REPO / "tests" / "pipeline" / "sequence_cubes.py")
    folder = tmp_path / "sequence"
    folder.mkdir()
    cube = cubes.build_sequence_cube(folder, 5)
    write_date_layer_cogs(cube, folder / "cogs")
    write_sequence_quicklooks(cube, folder / "quicklooks")
    env = {"SEG2CHANGE_SEQUENCE": str(folder), "IPYTHONDIR": str(tmp_path / "ipython")}
    printed = _run_notebook(SEQUENCE_NAME, env, tmp_path)
    assert "4 pairs over 5 windows" in printed, printed[-3000:]
    assert "first changed in window 3 (2024-03-01)" in printed, printed[-3000:]
    assert "pixels changed, first seen from 2024-02-01" in printed, printed[-3000:]
    assert "first_change.tif equals the cube's first_change" in printed, printed[-3000:]
    assert "sequence.gif" in printed, printed[-3000:]


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_clean(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name} cell {index} has outputs: clear them (make_notebooks.py)"
            assert cell.execution_count is None, f"{name} cell {index} has an execution count"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert "widgets" not in nb.metadata


def test_committed_notebooks_match_the_script(tmp_path: Path) -> None:
    written = _maker().write_notebooks(tmp_path)
    assert sorted(p.name for p in written) == sorted(NAMES)
    for path in written:
        committed = (NOTEBOOKS / path.name).read_text()
        assert committed == path.read_text(), (
            f"notebooks/{path.name} differs from what notebooks/make_notebooks.py writes; "
            "edit the script and run `python notebooks/make_notebooks.py`"
        )
