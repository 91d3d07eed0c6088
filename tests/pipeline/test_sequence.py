"""A sequence end to end on a generated 7-period scene: when things changed, and appending a window.

One module-scoped run does the work of every test: the sequence of the first 6 windows (stopped
once after pair 3's slices and resumed), then the 7th appended, and the whole 7-window sequence at
once in another folder (13 pair jobs, one of them a restart, and 13 window composites, on a 256 px
scene).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rioxarray  # noqa: F401  (the .rio accessor)
import xarray as xr
import zarr
from distributed import Client
from numpy.typing import NDArray

import pipeline.cluster as cluster
import pipeline.cube as input_cube
import pipeline.cube_assembly as cube_assembly
import pipeline.sequence.cube as sequence_cube
import pipeline.sequence.run as sequence_run
import pipeline.sequence.windows as sequence_windows
from pipeline.cluster import start_local_cluster
from pipeline.cube import INPUT_FINGERPRINT, open_cube, prepare_cube
from pipeline.demo import demo_checkpoint, demo_sequence_fields, generated_classes
from pipeline.discover import Discovery, discover
from pipeline.errors import OutputExistsError
from pipeline.run import RunResult, run_job
from pipeline.sequence import SEQUENCE_CUBE, SequenceResult, SequenceSpec, run_sequence
from pipeline.sequence.cube import update_date_layers
from pipeline.sequence.windows import WINDOWS_CUBE, prepare_windows
from pipeline.synthetic import SceneSpec
from pipeline.synthetic.sequence import GeneratedSequence, changed_classes, generate_sequence

PERIODS = 7


def _spec(scene: GeneratedSequence, output: Path, periods: int) -> SequenceSpec:
    base: dict[str, Any] = {**demo_sequence_fields(scene), "publishers": ["statistics"]}
    windows = [scene.window_interval(p) for p in range(1, periods + 1)]
    return SequenceSpec.build(base=base, output=str(output), windows=windows)


@dataclass(frozen=True)
class Runs:
    scene: GeneratedSequence
    appended: SequenceResult
    appended_calls: int
    whole: SequenceResult
    first_calls: int
    composites: dict[str, list[int]]
    clusters: int


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    if demo_checkpoint() is None:
        pytest.skip("the demo CACH checkpoint is absent (seg2change make-demo-checkpoint writes it)")
    root = tmp_path_factory.mktemp("sequence")
    scene = generate_sequence(
        SceneSpec(size=256, seed=0, cloud_fraction=0.2), root / "scene", periods=PERIODS
    )
    calls: list[str] = []
    composites: dict[str, list[int]] = {"windows": [], "pairs": []}
    runs = ("first", "appended", "whole")

    def counted(job: Any, **kwargs: Any) -> RunResult:
        calls.append(job.output)
        return run_job(job, **kwargs)

    def window_composite(job: Any, found: Discovery, bounds: Any) -> xr.Dataset:
        # One call per window for the lazy template and one per block (256 px: one block).
        composites["windows"].append(found.items["before"][0]["properties"]["synthetic:period"])
        return cube_assembly.assemble_region(job, found, bounds)

    started: list[Any] = []

    def counted_cluster(spec: Any) -> Any:
        started.append(spec)
        return start_local_cluster(spec)

    def pair_composite(job: Any, found: Discovery, bounds: Any) -> xr.Dataset:
        composites["pairs"].append(0)
        return cube_assembly.assemble_region(job, found, bounds)

    def stopped_at_pair_3(group: zarr.Group, pairs: int, windows: list[str]) -> None:
        # A run stopped after pair 3's slices were written, before its date layers were.
        if pairs == 3:
            raise KeyboardInterrupt("stopped at pair 3")
        update_date_layers(group, pairs, windows)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sequence_run, "run_job", counted)
        patch.setattr(sequence_windows, "_assemble", window_composite)
        patch.setattr(input_cube, "_assemble", pair_composite)
        patch.setattr(cluster, "start_local_cluster", counted_cluster)
        with pytest.MonkeyPatch.context() as stop:
            stop.setattr(sequence_cube, "update_date_layers", stopped_at_pair_3)
            with pytest.raises(KeyboardInterrupt):
                run_sequence(_spec(scene, root / "appended", PERIODS - 1), progress=False)
        first = run_sequence(_spec(scene, root / "appended", PERIODS - 1), progress=False)
        first_calls = len(calls)
        counts = {runs[0]: composites["windows"][:]}
        appended = run_sequence(_spec(scene, root / "appended", PERIODS), progress=False)
        appended_calls = len(calls) - first_calls
        counts[runs[1]] = composites["windows"][len(counts["first"]) :]
        whole = run_sequence(_spec(scene, root / "whole", PERIODS), progress=False)
        counts[runs[2]] = composites["windows"][len(counts["first"]) + len(counts["appended"]) :]
        counts["pairs"] = composites["pairs"]
    # Pair 3 counts as not done after the stop, and is run again (its own job restarts from its outputs).
    assert first.computed == tuple(range(3, PERIODS - 1)) and first.composited == ()
    yield Runs(scene, appended, appended_calls, whole, first_calls, counts, len(started))


def _layer(cube: Path, name: str) -> NDArray[Any]:
    return np.asarray(zarr.open_array(str(cube), path=name, mode="r")[...])


def _files(cube: Path) -> dict[str, bytes]:
    return {str(p.relative_to(cube)): p.read_bytes() for p in sorted(cube.rglob("*")) if p.is_file()}


def test_appending_a_window_runs_only_the_new_pair_and_equals_the_whole_run(runs: Runs) -> None:
    """Also after a stop between a pair's slices and its date layers (pair 3 is stacked twice)."""
    assert runs.first_calls == PERIODS - 1
    assert runs.appended.computed == (PERIODS - 1,) and runs.appended_calls == 1
    assert runs.whole.computed == tuple(range(1, PERIODS))
    appended, whole = _files(runs.appended.cube), _files(runs.whole.cube)
    assert appended.keys() == whole.keys()
    assert [name for name in appended if appended[name] != whole[name]] == []


def test_each_window_is_composited_once_and_appending_composites_only_the_new_window(runs: Runs) -> None:
    """N windows, N composites (not 2 (N - 1), one per window of each pair): two calls each, the
    lazy template and the one 256 px block; no pair composites its inputs again."""
    assert sorted(runs.composites["first"]) == sorted(2 * list(range(1, PERIODS)))
    assert runs.composites["appended"] == [PERIODS, PERIODS] and runs.appended.composited == (PERIODS,)
    assert sorted(runs.composites["whole"]) == sorted(2 * list(range(1, PERIODS + 1)))
    assert runs.whole.composited == tuple(range(1, PERIODS + 1))
    assert runs.composites["pairs"] == []


def test_worker_processes_serve_every_pair_and_the_in_process_cluster_is_started_per_pair(runs: Runs) -> None:
    """Worker processes keep their models across pairs; the default in-process cluster is started
    per pair job that computes, as a lone job starts it: 12 of the 13 pair jobs of the four runs
    (pair 3, run again after the stop, found its change cube complete)."""
    assert runs.first_calls + runs.appended_calls + len(runs.whole.computed) == 13
    assert runs.clusters == 12
    spec = runs.whole.spec
    with ExitStack() as stack:
        assert sequence_run._start_cluster(spec, stack) is None
        processes = {**spec.base, "cluster": {"processes": True, "n_workers": 1}}
        shared = SequenceSpec.build(base=processes, output=spec.output, windows=list(spec.windows))
        client = sequence_run._start_cluster(shared, stack)
        assert isinstance(client, Client) and len(client.scheduler_info()["workers"]) == 1
        fixed = {**spec.base, "cluster": {"processes": True, "n_workers": 1, "torch_threads": 1}}
        own = SequenceSpec.build(base=fixed, output=spec.output, windows=list(spec.windows))
        assert sequence_run._start_cluster(own, stack) is None
    assert client.status == "closed"


def test_a_pair_input_cut_from_the_windows_cube_equals_the_one_prepare_makes(
    runs: Runs, tmp_path: Path
) -> None:
    job = runs.whole.spec.pair_job(2)
    cut_path = Path(job.output) / "input_cube.zarr"
    cut = open_cube(cut_path)
    made = prepare_cube(job.model_copy(update={"output": str(tmp_path)}), discover(job), progress=False)
    prepared = open_cube(made.path)
    assert cut.attrs[INPUT_FINGERPRINT] == prepared.attrs[INPUT_FINGERPRINT]
    assert cut.attrs.keys() == prepared.attrs.keys()
    for name in ("reflectance", "clear_count"):
        assert cut[name].dims == prepared[name].dims
        stored = [
            dict(zarr.open_array(str(c), path=name, mode="r").attrs) for c in (cut_path, made.path.local_path)
        ]
        assert stored[0] == stored[1], name
        assert np.array_equal(cut[name].values, prepared[name].values, equal_nan=True), name
    assert cut.rio.crs == prepared.rio.crs and cut.rio.transform() == prepared.rio.transform()
    assert [str(e) for e in cut["epoch"].values] == ["before", "after"]


def test_the_windows_cube_holds_a_composite_per_window_along_time(runs: Runs) -> None:
    spec = runs.whole.spec
    windows = xr.open_zarr(Path(spec.output) / WINDOWS_CUBE, decode_coords="all")
    assert windows["reflectance"].dims == ("time", "band", "y", "x")
    assert windows["clear_count"].dims == ("time", "y", "x") and windows.sizes["time"] == PERIODS
    starts = [np.datetime64(w.start.replace(tzinfo=None), "ns") for w in spec.windows]
    assert list(windows["time"].values) == starts
    assert list(windows["time_bounds"].values[:, 1]) == [
        np.datetime64(w.end.replace(tzinfo=None), "ns") for w in spec.windows
    ]
    assert windows.attrs["windows"] == spec.window_dates()
    assert windows.rio.crs == runs.scene.spec.crs
    assert int(windows["clear_count"].max()) > 0


def test_a_window_append_stopped_part_way_is_composited_again(runs: Runs, tmp_path: Path) -> None:
    spec = SequenceSpec.build(
        base=runs.whole.spec.base, output=str(tmp_path / "seq"), windows=list(runs.whole.spec.windows[:3])
    )
    write = sequence_windows._write_blocks

    def stopped_in_window_3(job: Any, found: Discovery, path: Path, w: int, *args: Any) -> None:
        if w == 3:
            raise KeyboardInterrupt("stopped in window 3")
        write(job, found, path, w, *args)

    with pytest.MonkeyPatch.context() as stop:
        stop.setattr(sequence_windows, "_write_blocks", stopped_in_window_3)
        with pytest.raises(KeyboardInterrupt):
            prepare_windows(spec, progress=False)
    assert zarr.open_array(str(tmp_path / "seq" / WINDOWS_CUBE), path="reflectance").shape[0] == 3
    assert prepare_windows(spec, progress=False).computed == (3,)
    resumed = xr.open_zarr(tmp_path / "seq" / WINDOWS_CUBE)
    whole = xr.open_zarr(Path(runs.whole.spec.output) / WINDOWS_CUBE).isel(time=slice(0, 3))
    assert resumed.sizes["time"] == 3
    assert np.array_equal(resumed["reflectance"].values, whole["reflectance"].values, equal_nan=True)
    assert np.array_equal(resumed["clear_count"].values, whole["clear_count"].values)
    assert prepare_windows(spec, progress=False).computed == ()


def test_running_again_runs_nothing(runs: Runs) -> None:
    again = run_sequence(runs.whole.spec, progress=False)
    assert again.computed == ()


def test_first_change_date_is_right_where_change_is_caught(runs: Runs) -> None:
    cube = runs.whole.cube
    truth = runs.scene.truth.first_change
    first, count = _layer(cube, "first_change"), _layer(cube, "n_changes")
    caught = (truth > 0) & (count > 0) & (count != 65535)
    assert caught.sum() >= 0.8 * (truth > 0).sum()
    right = float(np.mean(first[caught] == truth[caught]))
    assert right >= 0.9, f"first-change date right for {right:.3f} of the caught pixels"
    attrs = zarr.open_array(str(cube), path="first_change", mode="r").attrs
    assert attrs["windows"] == runs.whole.spec.window_dates()
    assert _layer(cube, "class").shape[0] == PERIODS and _layer(cube, "change").shape[0] == PERIODS - 1
    opened = xr.open_zarr(cube)
    assert opened["first_change"].rio.crs == runs.scene.spec.crs
    assert opened["first_change"].rio.transform() == runs.scene.spec.transform
    # The last change is never before the first, and a pixel changed once has both equal.
    once = count == 1
    assert np.array_equal(first[once], _layer(cube, "last_change")[once])


def test_changed_area_per_period_and_target_is_close_to_the_truth(runs: Runs) -> None:
    flagged = _layer(runs.whole.cube, "target_change")
    for t, label in enumerate(str(x) for x in _layer(runs.whole.cube, "target")):
        classes = generated_classes(label)
        truth = [changed_classes(runs.scene.truth, p, classes) for p in range(2, PERIODS + 1)]
        found = [int(np.count_nonzero(flagged[p - 2, t] == 1)) for p in range(2, PERIODS + 1)]
        assert max(truth) > 500, label
        for p, (expected, got) in enumerate(zip(truth, found, strict=True), 2):
            if expected:
                assert abs(got - expected) <= 0.1 * expected, f"{label}, period {p}: {got} vs {expected}"
            else:  # no change of the target: at most 1 % of its largest period's area flagged
                assert got <= 0.01 * max(truth), f"{label}, period {p}: {got} flagged, none true"


def test_a_sequence_whose_windows_do_not_extend_the_cube_is_refused(runs: Runs, tmp_path: Path) -> None:
    spec = runs.whole.spec
    shifted = SequenceSpec.build(base=spec.base, output=spec.output, windows=list(spec.windows[1:]))
    before = _files(runs.whole.cube)
    with pytest.raises(OutputExistsError, match="windows can only be appended at the end"):
        run_sequence(shifted, progress=False)
    assert _files(runs.whole.cube) == before
    assert (Path(spec.output) / SEQUENCE_CUBE).is_dir()


def test_a_reference_window_compares_each_window_with_it_and_appends(runs: Runs, tmp_path: Path) -> None:
    """Windows 1..4 against window 1 (3 and 4: 2 is pair 1 already), then window 5 appended: its
    composite, pair 4 and its reference pair only. The reference pair of window 4 finds what
    changed between periods 1 and 4 (construction in 3, burn in 4)."""
    base = runs.whole.spec.base
    windows = list(runs.whole.spec.windows[:5])
    four = SequenceSpec.build(base=base, output=str(tmp_path / "seq"), windows=windows[:4], reference=1)
    first = run_sequence(four, progress=False)
    assert first.references == (3, 4) and first.composited == (1, 2, 3, 4) and first.computed == (1, 2, 3)
    five = SequenceSpec.build(base=base, output=str(tmp_path / "seq"), windows=windows, reference=1)
    appended = run_sequence(five, progress=False)
    assert (appended.references, appended.composited, appended.computed) == ((5,), (5,), (4,))
    assert run_sequence(five, progress=False).references == ()
    job = five.reference_job(4)
    cut = open_cube(Path(job.output) / "input_cube.zarr")
    stored = xr.open_zarr(tmp_path / "seq" / WINDOWS_CUBE).isel(time=[0, 3])
    assert np.array_equal(cut["reflectance"].values, stored["reflectance"].values, equal_nan=True)
    change = np.asarray(
        zarr.open_array(str(Path(job.output) / "change_cube.zarr"), path="change", mode="r")[...]
    )
    truth = runs.scene.truth.first_change
    changed = (truth >= 2) & (truth <= 4)
    assert float(np.mean(change[changed] == 1)) >= 0.8
    assert float(np.mean(change[truth == 0] == 1)) <= 0.05
