"""A bad job is refused before the heavy libraries load (``bench/cli_startup.py`` prints the times)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.engine_spec import BUILTIN_SEGMENTERS

HEAVY = ("torch", "distributed", "prefect", "dask", "zarr", "xarray", "stackstac")

JOB = """\
aoi:
  bbox: [13.30, 52.45, 13.45, 52.55]
  crs: EPSG:4326
before: 2024-05-01/2024-05-31
after: 2024-07-01/2024-07-31
catalog: https://stac.example.org/v1
collections: [sentinel-2-l2a]
output: {output}
prompts: {{classes: [water, vegetation], targets: [water]}}
models: {{segmenter: spectral}}
"""


def _misspelt(tmp_path: Path, line: str = "clod_limit: 30") -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(JOB.format(output=tmp_path / "out") + line + "\n")
    return path


def _invoke_in_fresh_process(args: list[str]) -> dict[str, object]:
    """Run the CLI in a new interpreter; report its exit code, stderr and which heavy modules loaded."""
    code = textwrap.dedent(
        f"""
        import json, sys
        from typer.testing import CliRunner
        from flows.cli import app
        result = CliRunner().invoke(app, {args!r})
        heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
        print(json.dumps({{"code": result.exit_code, "stderr": result.stderr, "heavy": heavy}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("command", ["run", "prepare", "discover"])
def test_misspelt_key_is_refused_before_heavy_imports(tmp_path: Path, command: str) -> None:
    result = _invoke_in_fresh_process([command, str(_misspelt(tmp_path))])
    assert result["code"] == 2
    assert "clod_limit" in str(result["stderr"]) and "not a known field" in str(result["stderr"])
    assert result["heavy"] == []


def test_wrong_type_is_refused_before_heavy_imports(tmp_path: Path) -> None:
    result = _invoke_in_fresh_process(["run", str(_misspelt(tmp_path, "block_size: large"))])
    assert result["code"] == 2
    assert "block_size" in str(result["stderr"])
    assert result["heavy"] == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--dashboard", "8787"], "is not host:port"),
        (["--dashboard", "127.0.0.1:8787", "--scheduler", "tcp://10.0.0.5:8786"], "local cluster only"),
    ],
)
def test_run_refuses_a_bad_dashboard_before_any_work(
    tmp_path: Path, options: list[str], message: str
) -> None:
    result = _invoke_in_fresh_process(["run", str(_misspelt(tmp_path, "cloud_limit: 30")), *options])
    assert result["code"] == 2
    assert message in str(result["stderr"])
    assert result["heavy"] == []
    assert not (tmp_path / "out").exists()


def test_respond_refuses_a_misspelt_job_option_before_prefect(tmp_path: Path) -> None:
    args = ["respond", "--area", "13.3,52.45,13.45,52.55", "--event-date", "2024-06-01", "--hazard", "flood"]
    args += [
        "--catalog",
        "https://stac.example.org/v1",
        "--collections",
        "s2",
        "--output",
        str(tmp_path / "o"),
    ]
    result = _invoke_in_fresh_process([*args, "--job-options", '{"clod_limit": 30}'])
    assert result["code"] == 2
    assert "clod_limit" in str(result["stderr"]) and "not a known field" in str(result["stderr"])
    assert result["heavy"] == []


def test_monitor_refuses_a_misspelt_job_file_before_prefect(tmp_path: Path) -> None:
    result = _invoke_in_fresh_process(["monitor", str(_misspelt(tmp_path)), "--run-date", "2024-07-03"])
    assert result["code"] == 2
    assert "region 'job'" in str(result["stderr"]) and "clod_limit" in str(result["stderr"])
    assert result["heavy"] == []


def test_misspelt_key_exits_non_zero_from_the_installed_command(tmp_path: Path) -> None:
    command = Path(sys.executable).with_name("seg2change")
    done = subprocess.run(
        [str(command), "run", str(_misspelt(tmp_path))], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "clod_limit" in done.stderr
    assert not (tmp_path / "out").exists()


def test_builtin_segmenter_names_match_the_registry() -> None:
    from seg2change_core.segmenters import available_segmenters

    assert set(BUILTIN_SEGMENTERS) <= set(available_segmenters())
