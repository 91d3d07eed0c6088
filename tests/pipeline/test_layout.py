"""One output layout: every path of a job's output is named once, in :mod:`pipeline.layout`."""

from __future__ import annotations

from pathlib import Path

import pytest

import pipeline.change_cube
import pipeline.publish.cogs
from pipeline.layout import OutputLayout
from pipeline.output_lock import LOCK_NAME
from pipeline.storage import Location


@pytest.mark.parametrize("root", ["s3://bucket/jobs/berlin", "s3://bucket/jobs/berlin/"])
def test_paths_of_an_object_store_output(root: str) -> None:
    layout = OutputLayout.of(root)
    expected = {
        "input_cube": "input_cube.zarr",
        "provenance": "provenance.json",
        "change_cube": "change_cube.zarr",
        "cogs": "cogs",
        "stac": "stac",
        "stac_collection": "stac/collection.json",
        "stac_item": "stac/item.json",
        "statistics_parquet": "statistics.parquet",
        "statistics_json": "statistics.json",
        "quicklook": "quicklook.png",
        "features_parquet": "features.parquet",
        "features_geojson": "features.geojson",
        "features_summary": "features_summary.json",
        "lock": LOCK_NAME,
    }
    for name, relative in expected.items():
        assert str(getattr(layout, name)) == f"s3://bucket/jobs/berlin/{relative}", name
    assert str(layout.cog("transition")) == "s3://bucket/jobs/berlin/cogs/transition.tif"


def test_paths_of_a_local_output(tmp_path: Path) -> None:
    layout = OutputLayout.of(tmp_path / "out")
    assert layout.root == Location(tmp_path / "out")
    assert layout.stac_item.local_path == tmp_path / "out" / "stac" / "item.json"
    assert layout.cog("change").local_path == tmp_path / "out" / "cogs" / "change.tif"
    assert set(layout.published_files()) == {
        "stac_item",
        "stac_collection",
        "statistics_json",
        "statistics_parquet",
        "quicklook",
    }
    assert all(p.parent in (layout.root, layout.stac) for p in layout.published_files().values())


def test_the_change_cube_read_model_has_one_owner() -> None:
    # publish.cogs re-exports it for its importers; there is one class, not a copy.
    assert pipeline.publish.cogs.ChangeCubeInfo is pipeline.change_cube.ChangeCubeInfo
    assert pipeline.publish.cogs.describe_change_cube is pipeline.change_cube.describe_change_cube
