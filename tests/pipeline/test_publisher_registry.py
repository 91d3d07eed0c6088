"""A publisher registered from this test module alone publishes a job's outputs; the registry's errors.

The toy publisher is real: it reads the change cube block by block and writes the changed pixels
of each block as CSV. The test counts them again from the whole change cube at once, and the STAC
that the job publishes describes the CSV with its size and checksum.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from pipeline.demo import demo_job_fields
from pipeline.engine_spec import ClusterSpec
from pipeline.errors import JobSpecError, PublishError
from pipeline.publish import (
    Artifact,
    PublishContext,
    PublishResult,
    available_publishers,
    publish,
    register_publisher,
    validate_published,
)
from pipeline.publish.cogs import block_windows
from pipeline.run import RunResult, run_job
from pipeline.spec import DEFAULT_PUBLISHERS, JobSpec
from pipeline.storage import replace_atomically
from pipeline.synthetic import SceneSpec, generate_scene

SIZE, BLOCK = 256, 128
TOY = "test_block_changes"
PUBLISHERS = ("cog", "statistics", "quicklook", TOY, "stac")


@register_publisher(TOY)
class BlockChanges:
    """``block_changes.csv``: the changed pixels (``change == 1``) of each block of the change cube."""

    name = TOY
    needs: tuple[str, ...] = ()

    def publish(self, context: PublishContext) -> list[Artifact]:
        info = context.info
        change = zarr.open_array(info.path.zarr_store(read_only=True), path="change", mode="r")
        path = context.local / "block_changes.csv"
        with replace_atomically(path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["row", "col", "changed_pixels"])
            for rows, cols in block_windows(info.height, info.width, info.chunk):
                writer.writerow([rows.start, cols.start, int((np.asarray(change[rows, cols]) == 1).sum())])
        context.progress("block changes", 1, 1)
        return [Artifact("block_changes", path, "text/csv", ("metadata",), "changed pixels per block")]


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> JobSpec:
    scene = generate_scene(SceneSpec(size=SIZE, seed=5, block_size=SIZE), tmp_path_factory.mktemp("scene"))
    fields = demo_job_fields(scene, str(scene.items_path), tmp_path_factory.mktemp("job") / "out")
    cluster = ClusterSpec(n_workers=1, threads_per_worker=1, processes=False, torch_threads=1)
    fields.update(block_size=BLOCK, cluster=cluster.model_dump(mode="json"), publishers=list(PUBLISHERS))
    return JobSpec.build(**fields)


@pytest.fixture(scope="module")
def run(job: JobSpec) -> RunResult:
    return run_job(job, progress=False)


def test_a_registered_publisher_runs_with_a_job(job: JobSpec, run: RunResult) -> None:
    out = Path(job.output)
    assert job.publishers == PUBLISHERS
    assert list(run.publication.artifacts) == list(PUBLISHERS)
    with (out / "block_changes.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    change = np.asarray(zarr.open_array(str(out / "change_cube.zarr"), path="change", mode="r")[...])
    assert change.shape == (SIZE, SIZE)
    blocks = change.reshape(SIZE // BLOCK, BLOCK, SIZE // BLOCK, BLOCK).swapaxes(1, 2)
    expected = [
        {"row": str(r * BLOCK), "col": str(c * BLOCK), "changed_pixels": str(int((blocks[r, c] == 1).sum()))}
        for r in range(SIZE // BLOCK)
        for c in range(SIZE // BLOCK)
    ]
    assert table == expected
    changed = sum(int(row["changed_pixels"]) for row in table)
    assert changed > 0, "the scene has change, so the toy has something to count"
    assert changed == next(t.changed_pixels for t in run.publication.statistics.totals if t.zone == "all")

    # The STAC, listed after the toy, describes its file like the built-in ones.
    item = json.loads((out / "stac" / "item.json").read_text())
    asset = item["assets"]["block_changes"]
    assert (asset["href"], asset["type"], asset["roles"]) == (
        "../block_changes.csv",
        "text/csv",
        ["metadata"],
    )
    assert asset["file:size"] == (out / "block_changes.csv").stat().st_size
    assert list(item["assets"]).index("quicklook") < list(item["assets"]).index("block_changes")
    validate_published(out / "stac" / "collection.json")  # sizes and checksums match the files
    assert run.publication.locations["block_changes"].local_path == out / "block_changes.csv"


def test_a_job_may_publish_a_subset(run: RunResult, tmp_path: Path) -> None:
    result = publish(
        run.job,
        run.inference.path,
        run.cube.path,
        run.discovery,
        tmp_path,
        publishers=["statistics", TOY],
        progress=False,
    )
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "block_changes.csv",
        "statistics.json",
        "statistics.parquet",
    ]
    assert (tmp_path / "block_changes.csv").read_bytes() == (
        Path(run.job.output) / "block_changes.csv"
    ).read_bytes()
    with pytest.raises(PublishError, match="do not include 'stac'.*add 'stac' to the job's publishers"):
        _ = result.stac_item


def test_registering_a_name_twice_is_refused() -> None:
    class Other(BlockChanges):
        pass

    with pytest.raises(PublishError, match=f"a publisher named '{TOY}' is already registered"):
        register_publisher(TOY)(Other)
    with pytest.raises(PublishError, match="a publisher named 'cog' is already registered"):
        register_publisher("cog")(Other)
    register_publisher(TOY)(BlockChanges)  # the same class again (a module imported twice) is no change
    assert TOY in available_publishers()


@pytest.mark.parametrize(
    ("publishers", "message"),
    [
        (["cog", "no_such_publisher"], "no publisher named 'no_such_publisher'; available: cog, quicklook"),
        (["quicklook", "statistics"], "'quicklook' needs 'statistics'.*list 'statistics' before 'quicklook'"),
        (["cog", "cog"], r"publishers \['cog'\] are listed more than once"),
        ([], "no publishers given"),
    ],
)
def test_a_job_naming_bad_publishers_is_refused(job: JobSpec, publishers: list[str], message: str) -> None:
    fields: dict[str, Any] = job.model_dump(mode="json")
    with pytest.raises(JobSpecError, match=message):
        JobSpec.build(**{**fields, "publishers": publishers})


def test_publish_refuses_an_unknown_publisher_before_writing(run: RunResult, tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="no publisher named 'nope'"):
        publish(None, run.inference.path, run.cube.path, run.discovery, tmp_path, publishers=["nope"])
    assert list(tmp_path.iterdir()) == []


def test_a_job_that_names_no_publishers_gets_the_four_built_ins(job: JobSpec) -> None:
    fields = job.model_dump(mode="json")
    del fields["publishers"]
    assert (
        JobSpec.build(**fields).publishers == DEFAULT_PUBLISHERS == ("cog", "statistics", "quicklook", "stac")
    )


@register_publisher("test_outside")
class Outside:
    """Names as its artifact a file beside the output folder, not in it."""

    name = "test_outside"
    needs: tuple[str, ...] = ()

    def publish(self, context: PublishContext) -> list[Artifact]:
        elsewhere = context.local.parent / "elsewhere.csv"
        elsewhere.write_text("x\n")
        return [Artifact("outside", elsewhere, "text/csv", ("metadata",), "outside")]


def test_a_publisher_that_names_a_file_outside_its_folder_is_refused(run: RunResult, tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="not a file it wrote inside .*write into PublishContext.local"):
        publish(
            run.job,
            run.inference.path,
            run.cube.path,
            run.discovery,
            tmp_path / "out",
            publishers=["test_outside"],
        )


def test_publish_result_names_what_is_missing() -> None:
    result = PublishResult(artifacts={}, locations={})
    with pytest.raises(PublishError, match="add 'statistics' to the job's publishers"):
        _ = result.statistics


def test_an_installed_package_declares_its_publisher_by_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib.metadata import EntryPoint

    from pipeline.publish import registry
    from seg2change_core import plugins

    (tmp_path / "toy_publisher_plugin.py").write_text(
        "from pipeline.publish import register_publisher\n\n"
        "@register_publisher('test_plugin_publisher')\n"
        "class Plugin:\n"
        "    name = 'test_plugin_publisher'\n"
        "    needs = ()\n\n"
        "    def publish(self, context):\n"
        "        return []\n"
    )
    (tmp_path / "broken_publisher_plugin.py").write_text("raise RuntimeError('no such format')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [EntryPoint("toy", "toy_publisher_plugin", registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(plugins, "entry_points", lambda group: points)
    monkeypatch.setattr(registry.PLUGINS, "loaded", False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    assert [p.name for p in registry.resolve_publishers(["cog", "test_plugin_publisher"])] == [
        "cog",
        "test_plugin_publisher",
    ]

    points[:] = [EntryPoint("broken", "broken_publisher_plugin", registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(registry.PLUGINS, "loaded", False)
    with pytest.raises(PublishError, match="entry point 'broken' .* failed to load .*no such format"):
        registry.get_publisher("test_other_publisher")
