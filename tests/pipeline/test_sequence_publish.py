"""A sequence's published outputs: the transition per pair, statistics over time and the STAC.

One module-scoped run does the work of every test: a generated 4-period scene, the sequence of its
first 3 windows, then the 4th appended (3 pair jobs on a 256 px scene); ``run_sequence`` publishes
after each.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pystac
import pytest
import xarray as xr
import zarr
from numpy.typing import NDArray
from pystac.extensions.datacube import DatacubeExtension
from test_sequence import _spec  # the sequence job of test_sequence on a generated scene

from pipeline.change_cube import describe_change_cube
from pipeline.demo import demo_checkpoint
from pipeline.errors import OutputExistsError
from pipeline.layout import OutputLayout
from pipeline.publish.legend import transition_label
from pipeline.publish.stac import multihash_sha256
from pipeline.publish.stac_validation import validate_published
from pipeline.publish.statistics import COLUMNS
from pipeline.sequence import SequenceSpec, run_sequence
from pipeline.sequence.cube import changed_pixels
from pipeline.sequence.publish import publish_sequence
from pipeline.sequence.stac import collection_id
from pipeline.sequence.statistics import SEQUENCE_COLUMNS, SEQUENCE_STATISTICS, pair_statistics
from pipeline.synthetic import SceneSpec
from pipeline.synthetic.sequence import generate_sequence

PERIODS = 4


@dataclass(frozen=True)
class Published:
    spec: SequenceSpec
    statistics_before_append: pd.DataFrame
    collection_before_append: dict[str, Any]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    if demo_checkpoint() is None:
        pytest.skip("the demo CACH checkpoint is absent (seg2change make-demo-checkpoint writes it)")
    root = tmp_path_factory.mktemp("sequence_publish")
    scene = generate_sequence(
        SceneSpec(size=256, seed=1, cloud_fraction=0.2), root / "scene", periods=PERIODS
    )

    def spec(periods: int) -> SequenceSpec:
        made = _spec(scene, root / "seq", periods)
        base = {**made.base, "publishers": ["statistics", "stac"]}
        return SequenceSpec.build(base=base, output=made.output, windows=list(made.windows))

    run_sequence(spec(PERIODS - 1), progress=False)
    before = pd.read_parquet(root / "seq" / SEQUENCE_STATISTICS)
    collection = json.loads((root / "seq" / "stac" / "collection.json").read_text())
    appended = run_sequence(spec(PERIODS), progress=False)
    assert appended.computed == (PERIODS - 1,)
    yield Published(appended.spec, before, collection)


def _layer(store: Path, name: str) -> NDArray[Any]:
    return np.asarray(zarr.open_array(str(store), path=name, mode="r")[...])


def test_the_transition_of_each_pair_is_stacked_with_its_code_table(published: Published) -> None:
    spec = published.spec
    cube = Path(spec.output) / "sequence.zarr"
    transition = xr.open_zarr(cube)["transition"]
    assert transition.dims == ("pair", "y", "x") and transition.shape[0] == spec.pairs
    classes = json.loads(str(zarr.open_group(str(cube), mode="r").attrs["classes"]))
    codes = transition.attrs["transition_codes"]
    assert len(codes) == len(classes) ** 2
    assert all(codes[str(c)] == transition_label(classes, c) for c in range(len(classes) ** 2))
    changed, stacked = _layer(cube, "change"), _layer(cube, "transition")
    for k in range(1, spec.pairs + 1):
        own = OutputLayout.of(spec.pair_output(k)).change_cube.local_path
        assert np.array_equal(stacked[k - 1], _layer(own, "transition"))
    # A transition code exactly where the pair changed; 65534 where it did not, 65535 where no data.
    assert np.all(stacked[changed == 1] < 65534)
    assert np.all(stacked[changed == 0] == 65534) and np.all(stacked[changed == 255] == 65535)
    assert (stacked < 65534).sum() > 0


def test_statistics_over_time_hold_every_pair_as_its_own_statistics(published: Published) -> None:
    spec = published.spec
    path = Path(spec.output) / SEQUENCE_STATISTICS
    table = pd.read_parquet(path)
    assert tuple(table.columns) == SEQUENCE_COLUMNS
    assert sorted(table["pair"].unique()) == list(range(1, spec.pairs + 1))
    pixel_area = describe_change_cube(OutputLayout.of(spec.pair_output(1)).change_cube).pixel_area_m2
    cube = Path(spec.output) / "sequence.zarr"
    changed = changed_pixels(cube)
    change, target_change = _layer(cube, "change"), _layer(cube, "target_change")
    targets = [str(t) for t in _layer(cube, "target")]
    for k in range(1, spec.pairs + 1):
        rows = table[table["pair"] == k]
        assert set(rows["pair_name"]) == {spec.pair_name(k)} and set(rows["window"]) == {k + 1}
        assert rows["before_start"].iloc[0] == pd.Timestamp(spec.windows[k - 1].start)
        assert rows["after_end"].iloc[0] == pd.Timestamp(spec.windows[k].end)
        own = pd.read_parquet(OutputLayout.of(spec.pair_output(k)).statistics_parquet.local_path)
        pd.testing.assert_frame_equal(rows[list(COLUMNS)].reset_index(drop=True), own)
        total = rows[(rows["kind"] == "changed") & (rows["zone"] == "all")]
        assert total["pixels"].tolist() == [changed[k - 1]]
        assert total["area_ha"].iloc[0] == pytest.approx(changed[k - 1] * pixel_area / 10_000)
        valid = change[k - 1] != 255
        for t, target in enumerate(targets):
            row = rows[(rows["kind"] == "target") & (rows["zone"] == "all") & (rows["target"] == target)]
            assert row["pixels"].tolist() == [int(np.count_nonzero((target_change[k - 1, t] == 1) & valid))]
    assert (table["kind"] == "transition").any() and (table["kind"] == "target").any()
    # Appending added the new pair's rows and left the earlier ones as they were.
    earlier = table[table["pair"] < spec.pairs].reset_index(drop=True)
    pd.testing.assert_frame_equal(earlier, published.statistics_before_append)
    metadata = pq.read_schema(path).metadata
    assert json.loads(metadata[b"windows"]) == spec.window_dates()
    assert metadata[b"job_name"] == b"seq" and b"before" not in metadata
    assert pq.read_schema(path).field("window").metadata[b"description"].startswith(b"the window")


def test_a_pair_without_published_statistics_is_counted_from_its_change_cube(published: Published) -> None:
    spec = published.spec
    stats_json = OutputLayout.of(spec.pair_output(2)).statistics_json.local_path
    published_rows = pair_statistics(spec, 2).to_frame()
    aside = stats_json.with_name("aside.json")
    shutil.move(stats_json, aside)
    try:
        counted = pair_statistics(spec, 2).to_frame()
    finally:
        shutil.move(aside, stats_json)
    pd.testing.assert_frame_equal(counted, published_rows)


def test_the_stac_describes_the_cube_as_a_datacube_and_each_pair_as_an_item(published: Published) -> None:
    spec = published.spec
    collection_path = Path(spec.output) / "stac" / "collection.json"
    checked = validate_published(collection_path)
    assert len(checked) == 1 + spec.pairs
    collection = pystac.Collection.from_file(str(collection_path))
    assert collection.id == collection_id(spec) == published.collection_before_append["id"]
    cube = DatacubeExtension.ext(collection)
    dims = cube.dimensions
    assert set(dims) == {"time", "pair", "x", "y", "target"}
    assert dims["time"].to_dict()["values"] == [
        w.start.isoformat().replace("+00:00", "Z") for w in spec.windows
    ]
    assert dims["pair"].to_dict()["values"] == [spec.pair_name(k) for k in range(1, spec.pairs + 1)]
    variables = cube.variables or {}
    assert variables["transition"].dimensions == ["pair", "y", "x"]
    assert variables["first_change"].dimensions == ["y", "x"]
    assets = collection.assets
    assert assets["sequence_cube"].href == "../sequence.zarr"
    assert assets["statistics"].href == f"../{SEQUENCE_STATISTICS}"
    assert {"first_change", "last_change", "n_changes", "strip", "animation"} <= set(assets)
    assert assets["first_change"].href == "../cogs/first_change.tif"
    for key, asset in assets.items():
        if key != "sequence_cube":
            path = collection_path.parent / asset.href
            assert asset.extra_fields["file:checksum"] == multihash_sha256(path), key
            assert asset.extra_fields["file:size"] == path.stat().st_size, key
    items = sorted(collection.get_items(), key=lambda item: item.id)
    assert [i.id for i in items] == [f"{collection.id}-{spec.pair_name(k)}" for k in range(1, spec.pairs + 1)]
    for k, item in enumerate(items, 1):
        assert item.common_metadata.start_datetime == spec.windows[k - 1].start
        assert item.common_metadata.end_datetime == spec.windows[k].end
        assert {"change_cube", "statistics_json", "statistics_parquet"} <= set(item.assets)
        assert item.properties["seg2change:window"] == k + 1
        assert set(DatacubeExtension.ext(item).dimensions) == {"time", "x", "y", "target"}
        assert set(DatacubeExtension.ext(item).variables or {}) == set(
            zarr.open_group(
                str(OutputLayout.of(spec.pair_output(k)).change_cube.local_path), mode="r"
            ).array_keys()
        ) - {"x", "y", "target", "spatial_ref", "block_done"}
        via = [link for link in item.links if link.rel == "via"]
        assert len(via) == 1 and via[0].href.endswith(f"pairs/{spec.pair_name(k)}/stac/item.json")


def test_publishing_a_sequence_that_has_not_run_is_refused(published: Published, tmp_path: Path) -> None:
    spec = published.spec
    empty = SequenceSpec.build(base=spec.base, output=str(tmp_path / "none"), windows=list(spec.windows))
    with pytest.raises(OutputExistsError, match="run the sequence first"):
        publish_sequence(empty)
    assert not (tmp_path / "none").exists() or not any((tmp_path / "none").iterdir())
