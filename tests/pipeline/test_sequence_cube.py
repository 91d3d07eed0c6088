"""The sequence cube's refusals (its layout and contents are tested on real runs in test_sequence*.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import zarr

from pipeline.errors import OutputExistsError
from pipeline.sequence.cube import open_sequence_cube, pairs_done


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_cube_of_the_format_without_transitions_is_refused_untouched(tmp_path: Path) -> None:
    cube = tmp_path / "sequence.zarr"
    zarr.open_group(str(cube), mode="w").attrs.update({"format": "seg2change-sequence-cube/1"})
    before = _files(cube)
    with pytest.raises(OutputExistsError, match=r"earlier seg2change .* replace it \(--overwrite\)"):
        pairs_done(cube, ["2024-01-01/2024-01-31", "2024-02-01/2024-02-29"], {})
    with pytest.raises(OutputExistsError, match="without class transitions"):
        open_sequence_cube(cube)
    assert _files(cube) == before


def test_a_store_that_is_no_sequence_cube_is_refused(tmp_path: Path) -> None:
    cube = tmp_path / "sequence.zarr"
    zarr.open_group(str(cube), mode="w").attrs.update({"format": "something else"})
    with pytest.raises(OutputExistsError, match="is not a seg2change sequence cube"):
        open_sequence_cube(cube)
