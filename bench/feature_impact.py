"""Per-feature impact at city scale: time and peak memory for many footprints over a large change cube.

Writes a generated change cube (``change``, ``change_probability``, ``class_before``,
``class_after``; ``--size`` px square in blocks of ``--block`` px, UTM 33N at 0.5 m) and
``--footprints`` building-sized rectangles as GeoParquet, then runs, each in a fresh process:

- ``blocks``: reading the four layers block by block with nothing else (the floor every
  publishing step pays);
- ``features``: :func:`pipeline.publish.features.feature_impact` over the same blocks with the
  footprints, and writing its GeoParquet, GeoJSON and summary.

It prints the wall time and the peak resident memory of each, and their ratio. Example::

    OMP_NUM_THREADS=1 .venv/bin/python bench/feature_impact.py --size 8192 --footprints 100000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pipeline.publish.cogs import ChangeCubeInfo

CRS_EPSG = 32633
ORIGIN = (500_000.0, 5_800_000.0)
RESOLUTION = 0.5


def _write_cube(root: Path, size: int, block: int) -> Path:
    import zarr

    path = root / "change_cube.zarr"
    group = zarr.open_group(str(path), mode="w")
    specs = {
        "change": ("uint8", 255),
        "change_probability": ("float32", np.nan),
        "class_before": ("uint8", 255),
        "class_after": ("uint8", 255),
    }
    arrays = {
        name: group.create_array(
            name, shape=(size, size), chunks=(block, block), dtype=dtype, fill_value=fill
        )
        for name, (dtype, fill) in specs.items()
    }
    rng = np.random.default_rng(0)
    for r in range(0, size, block):
        for c in range(0, size, block):
            h, w = min(block, size - r), min(block, size - c)
            probability = rng.random((h, w), dtype=np.float32)
            arrays["change_probability"][r : r + h, c : c + w] = probability
            arrays["change"][r : r + h, c : c + w] = (probability > 0.7).astype("uint8")
            arrays["class_before"][r : r + h, c : c + w] = rng.integers(0, 4, (h, w), dtype="uint8")
            arrays["class_after"][r : r + h, c : c + w] = rng.integers(0, 4, (h, w), dtype="uint8")
    return path


def _write_footprints(root: Path, size: int, count: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely
    from pyproj import CRS

    side = int(np.ceil(np.sqrt(count)))
    spacing = size * RESOLUTION / side
    rng = np.random.default_rng(1)
    index = np.arange(count)
    x0 = ORIGIN[0] + (index % side) * spacing + rng.uniform(0, spacing * 0.3, count)
    y0 = ORIGIN[1] - (index // side + 1) * spacing + rng.uniform(0, spacing * 0.3, count)
    width = rng.uniform(0.3, 0.6, count) * spacing
    height = rng.uniform(0.3, 0.6, count) * spacing
    boxes = shapely.box(x0, y0, x0 + width, y0 + height)
    table = pa.table(
        {
            "id": pa.array([f"b{i}" for i in index]),
            "district": pa.array([f"d{i % 16}" for i in index]),
            "geometry": pa.array(shapely.to_wkb(boxes), type=pa.binary()),
        }
    )
    geo = {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": ["Polygon"],
                "crs": CRS.from_epsg(CRS_EPSG).to_json_dict(),
            }
        },
    }
    table = table.replace_schema_metadata({b"geo": json.dumps(geo).encode()})
    path = root / "footprints.parquet"
    pq.write_table(table, path)
    return path


def _info(cube: Path, size: int, block: int) -> ChangeCubeInfo:
    from affine import Affine
    from pyproj import CRS

    from pipeline.publish.cogs import ChangeCubeInfo
    from pipeline.storage import Location

    return ChangeCubeInfo(
        path=Location(str(cube)),
        height=size,
        width=size,
        chunk=block,
        crs=CRS.from_epsg(CRS_EPSG),
        transform=Affine(RESOLUTION, 0, ORIGIN[0], 0, -RESOLUTION, ORIGIN[1]),
        classes=("background", "building", "road", "tree"),
        targets=("building",),
        fingerprint="bench",
        attrs={},
    )


def _measure(mode: str, root: Path, size: int, block: int) -> None:
    import zarr

    from pipeline.publish import features  # noqa: F401  (both modes load the same libraries)
    from pipeline.publish.cogs import block_windows

    start = time.perf_counter()
    info = _info(root / "change_cube.zarr", size, block)
    if mode == "blocks":
        store = info.path.zarr_store(read_only=True)
        names = ("change", "change_probability", "class_before", "class_after")
        arrays = {n: zarr.open_array(store, path=n, mode="r") for n in names}
        total = 0
        for rows, cols in block_windows(size, size, block):
            for array in arrays.values():
                total += int(np.asarray(array[rows, cols]).size)
        extra = f"{total} values read"
    else:
        from pipeline.publish.features import feature_impact, read_footprints, write_feature_impact

        footprints = read_footprints(root / "footprints.parquet", zone_field="district")
        impact = feature_impact(info, footprints, threshold=0.25)
        write_feature_impact(impact, root / "f.parquet", root / "f.geojson", root / "f.json")
        counts = impact.summary["all"]
        extra = (
            f"{counts['footprints']} footprints: {counts['covered']} covered, "
            f"{counts['not_covered']} not covered, {counts['affected']} affected"
        )
    elapsed = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {"mode": mode, "seconds": round(elapsed, 2), "peak_mib": round(peak_mib, 1), "note": extra}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=8192, help="cube side in pixels")
    parser.add_argument("--footprints", type=int, default=100_000, help="number of footprints")
    parser.add_argument("--block", type=int, default=1024, help="block side in pixels")
    parser.add_argument("--measure", choices=("blocks", "features"), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        _measure(args.measure, args.root, args.size, args.block)
        return
    with tempfile.TemporaryDirectory(prefix="seg2change-bench-features-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        _write_cube(root, args.size, args.block)
        _write_footprints(root, args.size, args.footprints)
        print(
            f"generated a {args.size} px cube (blocks of {args.block}) and {args.footprints} footprints "
            f"in {time.perf_counter() - start:.1f} s"
        )
        results = {}
        for mode in ("blocks", "features"):
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--measure",
                    mode,
                    "--root",
                    str(root),
                    "--size",
                    str(args.size),
                    "--block",
                    str(args.block),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            r = results[mode]
            print(f"{mode:>8}: {r['seconds']:8.2f} s, peak {r['peak_mib']:8.1f} MiB  ({r['note']})")
        extra = results["features"]["peak_mib"] - results["blocks"]["peak_mib"]
        ratio = results["features"]["peak_mib"] / results["blocks"]["peak_mib"]
        print(f"peak memory with footprints / without: {ratio:.2f}x (+{extra:.0f} MiB)")


if __name__ == "__main__":
    main()
