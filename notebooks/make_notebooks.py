"""Write the notebooks for scientists who open the published outputs, without outputs.

The notebooks are generated from the cell sources below, so that they are reproducible and stay
reviewable as plain Python; they are committed *without* outputs or execution counts, and
``tests/infra/test_notebooks.py`` executes them against a fresh demo run and checks that the
committed files equal what this script writes.

Usage::

    python notebooks/make_notebooks.py            # rewrite notebooks/*.ipynb
    python notebooks/make_notebooks.py OUT_DIR    # write them elsewhere

Every notebook but the sequence's reads the job's output folder from ``SEG2CHANGE_OUTPUT`` (default
``../seg2change-demo/output``, where ``seg2change demo`` run from the repository root writes);
``04_sequence`` reads a sequence's output folder from ``SEG2CHANGE_SEQUENCE``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from textwrap import dedent

import nbformat
from nbformat.notebooknode import NotebookNode

__all__ = ["NOTEBOOKS", "build_notebook", "write_notebooks"]

Cell = tuple[str, str]  # ("md" | "code", source)

_SETUP = """
import os
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="Consolidated metadata")  # zarr 3 notes it is an extension

OUTPUT = Path(os.environ.get("SEG2CHANGE_OUTPUT", "../seg2change-demo/output")).expanduser()
if not (OUTPUT / "change_cube.zarr").exists():
    raise FileNotFoundError(
        f"no change cube in {OUTPUT.resolve()}: run `seg2change demo` from the repository root, "
        "or set SEG2CHANGE_OUTPUT to a job's output folder"
    )
print("output folder:", OUTPUT.resolve())
"""

NB01: list[Cell] = [
    (
        "md",
        """
        # 1. Open a seg2change change cube

        A seg2change job writes its results into one output folder:

        | path | what |
        |---|---|
        | `change_cube.zarr` | the change cube (Zarr v3, consolidated metadata, CRS as CF `spatial_ref`) |
        | `input_cube.zarr` | the bi-temporal input cube `(epoch, band, y, x)` the models read |
        | `cogs/*.tif` | Cloud-Optimized GeoTIFFs of the main layers |
        | `statistics.parquet`, `statistics.json` | changed area per target class and per transition |
        | `quicklook.png` | before, after and change side by side |
        | `stac/item.json`, `stac/collection.json` | the STAC description of all of the above |

        This notebook opens the change cube with xarray and rioxarray, draws the before/after/change
        picture, and recomputes the changed area per transition to check it against the published
        statistics. Set `SEG2CHANGE_OUTPUT` to the output folder of your job (default: the output
        of `seg2change demo` run from the repository root).
        """,
    ),
    ("code", _SETUP),
    (
        "md",
        """
        ## Open the cube

        A plain `xr.open_zarr` is enough: every layer lists `spatial_ref` as a coordinate, so
        rioxarray finds the CRS and the transform, and the integer layers keep their stored types
        with their nodata values in `.rio.nodata` and the `nodata` attribute (255 for the `uint8`
        layers, 65535 for `transition`; NaN for `change_probability`). A cube written as Zarr v2
        (`zarr_format: 2`) keeps CF `_FillValue` instead: open it with `mask_and_scale=False`.

        | variable | meaning |
        |---|---|
        | `change_probability` | probability of change (float32, NaN nodata) |
        | `change` | 1 changed, 0 unchanged, 255 nodata |
        | `class_before`, `class_after` | class index on each date (labels in the `classes` attribute) |
        | `transition` | `class_before * K + class_after` where changed, 65534 unchanged, 65535 nodata |
        | `target_change` | per target class: 1 where changed and either date is that class |
        """,
    ),
    (
        "code",
        """
        import json

        import rioxarray  # noqa: F401  (registers the .rio accessor)
        import xarray as xr

        cube = xr.open_zarr(OUTPUT / "change_cube.zarr")
        assert cube.rio.crs is not None and cube["transition"].dtype == "uint16"
        cube
        """,
    ),
    (
        "code",
        """
        print("CRS:      ", cube.rio.crs)
        print("transform:", tuple(cube.rio.transform())[:6])
        print("bounds:   ", cube.rio.bounds())
        res_x, res_y = cube.rio.resolution()
        print("resolution:", res_x, res_y)
        print("shape:", cube.sizes["y"], "x", cube.sizes["x"], "pixels; chunks", cube["change"].encoding["chunks"])

        classes = json.loads(cube.attrs["classes"])
        K = len(classes)
        print(K, "classes:", classes)
        print("targets:", [str(t) for t in cube["target"].values])
        print("class_before flag_meanings:", cube["class_before"].attrs.get("flag_meanings"))
        assert int(cube["transition"].attrs["num_classes"]) == K
        """,
    ),
    (
        "md",
        """
        ## The same cube on object storage

        A job whose `output` is `s3://bucket/prefix` (AWS, SeaweedFS, MinIO, Ceph...) writes the
        same folder there, and it opens the same way: give the URI and the fsspec
        `storage_options` (they go to `s3fs`). `endpoint_url` is needed for anything but AWS. s3fs
        also reads `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_ENDPOINT_URL` from the
        environment by itself; they are passed explicitly below to show where they go (pass
        `anon=True` for a public bucket). The cell runs only when `SEG2CHANGE_S3_URI` is set to
        the job's output folder, e.g. `s3://my-bucket/jobs/flood-2024/output`; when that folder
        holds the same job as `SEG2CHANGE_OUTPUT`, the two cubes are compared.
        """,
    ),
    (
        "code",
        """
        S3_URI = os.environ.get("SEG2CHANGE_S3_URI")
        if S3_URI:
            storage_options = {
                "endpoint_url": os.environ.get("AWS_ENDPOINT_URL"),  # e.g. http://127.0.0.1:8333; None on AWS
                "key": os.environ.get("AWS_ACCESS_KEY_ID"),
                "secret": os.environ.get("AWS_SECRET_ACCESS_KEY"),
            }
            remote = xr.open_zarr(
                S3_URI.rstrip("/") + "/change_cube.zarr",
                consolidated=True,
                decode_coords="all",
                mask_and_scale=False,
                storage_options={k: v for k, v in storage_options.items() if v is not None},
            )
            print(remote.rio.crs, remote.rio.bounds())
            if remote.attrs.get("fingerprint") == cube.attrs.get("fingerprint"):
                for name in ("change_probability", "change", "class_before", "class_after", "transition"):
                    xr.testing.assert_equal(remote[name], cube[name])
                assert remote.rio.crs == cube.rio.crs and remote.rio.transform() == cube.rio.transform()
                print("the cube in", S3_URI, "is the one in", OUTPUT)
        else:
            print("SEG2CHANGE_S3_URI is not set: skipping the object-storage example")
        """,
    ),
    (
        "md",
        """
        ## Before, after and change

        The true-colour images come from the input cube's red, green and blue bands; the change
        panel paints each changed pixel in the colour of its transition (the ten largest, the rest
        as "other"). Large areas are read with a stride so the picture stays small. The drawing
        uses the project's NumPy-only helpers in `pipeline.quicklook` (no matplotlib needed);
        `quicklook.png` in the output folder is the published version of the same picture.
        """,
    ),
    (
        "code",
        """
        import tempfile

        import numpy as np
        from IPython.display import Image, display

        from pipeline.quicklook import render_quicklook

        NO_CHANGE = int(cube["transition"].attrs["no_change_value"])  # 65534; 65535 is nodata
        stride = max(1, -(-max(cube.sizes["y"], cube.sizes["x"]) // 1024))
        window = {"y": slice(None, None, stride), "x": slice(None, None, stride)}

        inputs = xr.open_zarr(OUTPUT / "input_cube.zarr", consolidated=True, decode_coords="all")
        rgb = inputs["reflectance"].sel(band=["red", "green", "blue"]).isel(window)
        before = np.moveaxis(rgb.isel(epoch=0).values, 0, -1)  # (y, x, 3)
        after = np.moveaxis(rgb.isel(epoch=1).values, 0, -1)

        transition = cube["transition"].isel(window).values
        codes = np.where(transition < NO_CHANGE, transition.astype(np.int64), -1)
        present, counts = np.unique(codes[codes >= 0], return_counts=True)
        ranked = [int(c) for c in present[np.argsort(-counts, kind="stable")]]
        palette = [
            (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
        ]  # fmt: skip
        shown = ranked[: len(palette)]
        labels = {c: f"{classes[c // K]} -> {classes[c % K]}" for c in shown}
        colours = {c: palette[i] for i, c in enumerate(shown)}
        if len(ranked) > len(shown):
            other = K * K
            codes = np.where(np.isin(codes, ranked[len(shown) :]), other, codes)
            labels[other], colours[other] = "other transitions", (255, 255, 255)

        png = Path(tempfile.mkdtemp(prefix="seg2change-notebook-")) / "before_after_change.png"
        render_quicklook(before, after, codes, labels, colours, png, scale=max(1, 256 // max(codes.shape)))
        display(Image(filename=str(png)))
        """,
    ),
    (
        "md",
        """
        ## Changed area per transition

        Count the changed pixels of every transition code over the whole cube (dask reads it chunk
        by chunk, so this works for areas that do not fit in memory), decode each code
        `before * K + after` into class names, and multiply by the pixel area
        `|res_x * res_y|` (square metres on a metric grid). The published `statistics.parquet`
        holds the same numbers for the whole area (`zone == "all"`) and for each zone of the job:
        kind `transition` where the class changed, kind `class_unchanged` where the change model
        found change but the segmenter saw the same class on both dates ("changed, class
        unchanged"), and one row of kind `changed` with their total.
        """,
    ),
    (
        "code",
        """
        import dask.array as da
        import pandas as pd

        pixel_area = abs(res_x * res_y)
        flat = cube["transition"].data.ravel()
        binned = da.where(flat < NO_CHANGE, flat, K * K).astype("int64")  # unchanged and nodata -> K*K
        per_code = da.bincount(binned, minlength=K * K + 1).compute()[: K * K]

        mine = pd.DataFrame(
            [
                {"class_from": classes[code // K], "class_to": classes[code % K], "pixels": int(n)}
                for code, n in enumerate(per_code)
                if n > 0
            ]
        )
        mine["area_m2"] = mine["pixels"] * pixel_area
        mine["area_ha"] = mine["area_m2"] / 10_000
        mine = mine.sort_values("pixels", ascending=False, ignore_index=True)
        mine
        """,
    ),
    (
        "code",
        """
        published = pd.read_parquet(OUTPUT / "statistics.parquet")
        whole = published[(published["zone"] == "all") & published["kind"].isin(["transition", "class_unchanged"])]
        whole = whole.astype({"class_from": str, "class_to": str})[["class_from", "class_to", "pixels", "area_m2", "area_ha"]]
        total = published[(published["zone"] == "all") & (published["kind"] == "changed")]
        assert total["pixels"].tolist() == [whole["pixels"].sum()]

        both = mine.merge(whole, on=["class_from", "class_to"], how="outer", suffixes=("_cube", "_published"))
        assert both.notna().all().all(), f"transitions in one table only:\\n{both[both.isna().any(axis=1)]}"
        assert (both["pixels_cube"] == both["pixels_published"]).all(), both
        np.testing.assert_allclose(both["area_m2_cube"], both["area_m2_published"], rtol=1e-9)
        print(f"{len(both)} transitions, {int(mine['pixels'].sum())} changed pixels: equal to statistics.parquet")
        both[["class_from", "class_to", "pixels_cube", "area_ha_cube", "area_ha_published"]]
        """,
    ),
    (
        "md",
        """
        The target rows (`kind == "target"`) count, per target class, the valid pixels where
        `target_change` is 1 (a change into or out of that class):
        """,
    ),
    (
        "code",
        """
        valid = cube["change"] != 255
        per_target = ((cube["target_change"] == 1) & valid).sum(dim=("y", "x")).compute()
        targets = published[(published["zone"] == "all") & (published["kind"] == "target")]
        for name, pixels in zip(targets["target"], targets["pixels"], strict=True):
            assert int(per_target.sel(target=name)) == pixels, (name, int(per_target.sel(target=name)), pixels)
            print(f"{name:>12}: {pixels:>9,} px  {pixels * pixel_area / 10_000:,.2f} ha")
        """,
    ),
]

NB02: list[Cell] = [
    (
        "md",
        """
        # 2. The STAC Item of a run

        Every run publishes a STAC Collection and one Item under `stac/` in its output folder. The
        Item's assets are the change cube (Zarr), one COG per main layer, the statistics and the
        quick-look; its properties carry the grid (`proj:*`), how the result was made
        (`processing:*`, the models, the classes) and the time span of the two windows. This
        notebook loads the Item with pystac, opens its assets and checks them.
        """,
    ),
    ("code", _SETUP),
    (
        "code",
        """
        import json

        import pystac

        items = [
            p for p in sorted(OUTPUT.glob("stac/**/*.json")) if json.loads(p.read_text()).get("type") == "Feature"
        ]
        assert items, f"no STAC Item under {OUTPUT / 'stac'}"
        item = pystac.Item.from_file(str(items[0]))
        print(items[0])
        print("id:        ", item.id)
        print("collection:", item.collection_id)
        print("bbox:      ", item.bbox)
        """,
    ),
    (
        "code",
        """
        from pystac.extensions.projection import ProjectionExtension

        print("datetime:", item.datetime)
        print("start:   ", item.common_metadata.start_datetime)
        print("end:     ", item.common_metadata.end_datetime)

        proj = ProjectionExtension.ext(item)
        print("\\nprojection:", proj.code, "shape", proj.shape, "transform", proj.transform)
        print("proj:bbox:", item.properties["proj:bbox"])

        print("\\nprocessing:")
        for key, value in item.properties.items():
            if key.startswith("processing:"):
                print(f"  {key}: {json.dumps(value, indent=2) if isinstance(value, dict) else value}")
        for key in ("seg2change:classes", "seg2change:targets", "seg2change:models"):
            print(f"{key}: {item.properties.get(key)}")
        """,
    ),
    (
        "code",
        """
        for key, asset in item.assets.items():
            print(f"{key:20} {asset.media_type}\\n{'':20} {asset.get_absolute_href()}")
        """,
    ),
    (
        "md",
        """
        ## Open the Zarr asset and a COG

        Asset hrefs are relative to the Item, so `get_absolute_href()` gives a path (or URL) that
        xarray and rasterio open directly. The COG of a layer holds the same values as the cube's
        layer; here we check one window in the middle of the grid, and that both carry the same
        CRS and transform.
        """,
    ),
    (
        "code",
        """
        import numpy as np
        import rioxarray
        import xarray as xr

        cube = xr.open_zarr(
            item.assets["change_cube"].get_absolute_href(),
            consolidated=True,
            decode_coords="all",
            mask_and_scale=False,
        )
        layer = "transition"
        cog = rioxarray.open_rasterio(item.assets[layer].get_absolute_href(), masked=False).squeeze("band", drop=True)
        print(cog.dtype, cog.shape, cog.rio.crs, "nodata", cog.rio.nodata)

        assert cog.rio.crs == cube.rio.crs
        assert cog.rio.transform().almost_equals(cube.rio.transform())
        assert cog.shape == cube[layer].shape and cog.dtype == cube[layer].dtype

        h, w = cube[layer].shape
        rows = slice(max(0, h // 2 - 32), min(h, h // 2 + 32))
        cols = slice(max(0, w // 2 - 32), min(w, w // 2 + 32))
        window_cog = cog.isel(y=rows, x=cols)
        window_cube = cube[layer].isel(y=rows, x=cols)
        np.testing.assert_array_equal(window_cog.values, window_cube.values)
        np.testing.assert_allclose(window_cog["x"], window_cube["x"])
        np.testing.assert_allclose(window_cog["y"], window_cube["y"])
        print(f"{layer}: COG equals the cube over rows {rows.start}:{rows.stop}, cols {cols.start}:{cols.stop}")
        """,
    ),
    (
        "md",
        """
        ## Check a file's checksum

        `file:checksum` is a [multihash](https://multiformats.io/multihash/): `12` (SHA2-256),
        `20` (32 bytes), then the hex digest. After copying or downloading the outputs, compare it
        with the file's own SHA-256 (and `file:size` with its size).
        """,
    ),
    (
        "code",
        """
        import hashlib


        def multihash_sha256(path, chunk=1 << 20):
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(chunk):
                    digest.update(block)
            return "1220" + digest.hexdigest()


        checked = 0
        for key, asset in item.assets.items():
            expected = asset.extra_fields.get("file:checksum")
            if expected is None:  # the Zarr store is a folder: no single checksum
                continue
            path = Path(asset.get_absolute_href())
            assert multihash_sha256(path) == expected, f"{key}: {path} does not match its file:checksum"
            assert path.stat().st_size == asset.extra_fields["file:size"], key
            checked += 1
            print(f"{key:20} ok  {expected[:20]}...")
        assert checked, "no asset has a file:checksum"
        """,
    ),
    (
        "code",
        """
        from IPython.display import Image, display

        display(Image(filename=item.assets["quicklook"].get_absolute_href()))
        """,
    ),
]

NB03: list[Cell] = [
    (
        "md",
        """
        # 3. Evaluate a change map against ground truth

        Compare the run's binary change layer with a change raster on the same grid and report
        change IoU, F1, precision, recall and overall accuracy. The truth raster holds 0 where
        nothing changed, any value above 0 where something changed, and 255 where it is unknown
        (left out). Set `SEG2CHANGE_TRUTH` to its path; the default is the truth of the generated
        demo scene (`../seg2change-demo/scene/truth/change.tif`).

        The comparison runs block by block (one chunk of the cube at a time), so it works for
        areas that do not fit in memory.
        """,
    ),
    ("code", _SETUP),
    (
        "code",
        """
        import rasterio
        import rioxarray  # noqa: F401  (registers the .rio accessor)
        import xarray as xr
        from rasterio.windows import Window

        from seg2change_core.metrics import BinaryConfusion

        TRUTH = Path(os.environ.get("SEG2CHANGE_TRUTH", "../seg2change-demo/scene/truth/change.tif")).expanduser()
        cube = xr.open_zarr(OUTPUT / "change_cube.zarr", consolidated=True, decode_coords="all", mask_and_scale=False)
        change = cube["change"]  # 1 changed, 0 unchanged, 255 nodata
        with rasterio.open(TRUTH) as truth:
            print(TRUTH, truth.shape, truth.crs, truth.dtypes[0])
            same_grid = (
                truth.shape == change.shape
                and truth.crs == cube.rio.crs
                and truth.transform.almost_equals(cube.rio.transform())
            )
        assert same_grid, f"the truth {TRUTH} is not on the change cube's grid: reproject it (see below)"
        """,
    ),
    (
        "code",
        """
        confusion = BinaryConfusion(ignore_index=255)  # truth 255 is left out
        step = int(change.encoding["chunks"][0])
        height, width = change.shape
        with rasterio.open(TRUTH) as truth:
            for row in range(0, height, step):
                for col in range(0, width, step):
                    rows, cols = min(step, height - row), min(step, width - col)
                    expected = truth.read(1, window=Window(col, row, cols, rows))
                    predicted = change[row : row + rows, col : col + cols].values
                    valid = predicted != 255  # the cube's nodata is left out too
                    confusion.update(predicted[valid], expected[valid])

        scores = confusion.scores()
        print(f"pixels compared: {confusion.tp + confusion.fp + confusion.fn + confusion.tn:,}")
        print("confusion [[tn, fp], [fn, tp]]:\\n", confusion.matrix)
        for name in ("iou", "f1", "precision", "recall", "oa", "kappa"):
            print(f"{name:>10}: {getattr(scores, name):.4f}")
        assert all(0.0 <= getattr(scores, n) <= 1.0 for n in ("iou", "f1", "precision", "recall", "oa"))
        """,
    ),
    (
        "md",
        """
        ## Your own labels

        Any reference you trust works, once it is a raster on the change cube's grid with 0 / >0 /
        255 as above:

        - **Polygons of changed areas** (GeoPackage, GeoJSON): burn them onto the grid, 1 inside
          and 0 elsewhere, and mark what was not surveyed as 255:

          ```python
          import geopandas as gpd
          from rasterio.features import rasterize

          shapes = gpd.read_file("changes.gpkg").to_crs(cube.rio.crs)
          labels = rasterize(
              [(g, 1) for g in shapes.geometry], out_shape=change.shape,
              transform=cube.rio.transform(), fill=0, dtype="uint8",
          )
          ```

        - **A raster on another grid**: resample it onto the cube's grid with nearest neighbour,
          e.g. `reference.rio.reproject_match(cube["change"], resampling=Resampling.nearest)`.

        Write it as a GeoTIFF (`xr.DataArray(labels, coords=change.coords).rio.to_raster(...)`,
        nodata 255) and run this notebook with `SEG2CHANGE_TRUTH` pointing at it. Sparse labels
        (a few hundred checked points) can be scored the same way: set every other pixel to 255.
        To score one target class only, use `cube["target_change"].sel(target="building")`
        instead of `cube["change"]`.
        """,
    ),
]

_SEQUENCE_SETUP = """
import os
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="Consolidated metadata")  # zarr 3 notes it is an extension

SEQUENCE = Path(os.environ.get("SEG2CHANGE_SEQUENCE", "../out/berlin-monthly")).expanduser()
if not (SEQUENCE / "sequence.zarr").exists():
    raise FileNotFoundError(
        f"no sequence cube in {SEQUENCE.resolve()}: run `seg2change sequence SEQUENCE.yaml` (README, "
        "'Sequences'), or set SEG2CHANGE_SEQUENCE to a sequence's output folder"
    )
print("sequence folder:", SEQUENCE.resolve())
"""

NB04: list[Cell] = [
    (
        "md",
        """
        # 4. A sequence: when did it change, and how much per period?

        A sequence (`seg2change sequence SEQUENCE.yaml`, README "Sequences") runs each consecutive
        pair of its N windows as a two-date job and stacks their change into one cube,
        `sequence.zarr`, in the sequence's output folder:

        | variable | dims | meaning |
        |---|---|---|
        | `change`, `change_probability` | `(pair, y, x)` | each pair's binary change (255 nodata) and probability |
        | `target_change` | `(pair, target, y, x)` | each pair's change of each target class |
        | `class` | `(time, y, x)` | each window's class (labels in the `classes` attribute) |
        | `first_change`, `last_change` | `(y, x)` | the window (1-based) after the first / last pair that changed; 0 never; 65535 nodata |
        | `n_changes` | `(y, x)` | how many pairs changed |
        | `first_target_change` | `(target, y, x)` | per target, as `first_change` |

        Pair `k` compares window `k` with window `k + 1`. The windows' dates are the cube's
        `windows` attribute (`START/END`, UTC; window `k` at index `k - 1`). Set
        `SEG2CHANGE_SEQUENCE` to the sequence's output folder (default: the README example's
        `out/berlin-monthly`, seen from `notebooks/`).
        """,
    ),
    ("code", _SEQUENCE_SETUP),
    (
        "code",
        """
        import json

        import numpy as np
        import rioxarray  # noqa: F401  (registers the .rio accessor)
        import xarray as xr

        seq = xr.open_zarr(SEQUENCE / "sequence.zarr", decode_coords="all", mask_and_scale=False)
        windows = list(seq.attrs["windows"])
        pairs = seq.sizes["pair"]
        assert len(windows) == pairs + 1 == seq.sizes["time"], "the sequence is still running: let it finish"
        classes = json.loads(seq.attrs["classes"])
        targets = [str(t) for t in seq["target"].values]
        NODATA = 65535  # of the date layers

        print("CRS:", seq.rio.crs, " shape:", seq.sizes["y"], "x", seq.sizes["x"])
        print(pairs, "pairs over", len(windows), "windows:")
        for k, window in enumerate(windows, 1):
            print(f"  window {k}: {window}")
        print("classes:", classes, " targets:", targets)
        seq
        """,
    ),
    (
        "md",
        """
        ## Changed area per period and target

        Count, for every pair, the pixels where `target_change` is 1 for each target (and where
        `change` is 1 at all), and multiply by the pixel area. Dask reads the cube chunk by chunk,
        so this works for areas that do not fit in memory. A period is labelled with the window
        it ends in.
        """,
    ),
    (
        "code",
        """
        import pandas as pd

        from pipeline.sequence.quicklook import window_labels

        labels = window_labels(windows)  # the start dates ("2024-03-01")
        res_x, res_y = seq.rio.resolution()
        pixel_ha = abs(res_x * res_y) / 10_000  # metres on a projected grid
        per_target = (seq["target_change"] == 1).sum(dim=("y", "x")).compute()  # (pair, target)
        per_pair = (seq["change"] == 1).sum(dim=("y", "x")).compute()  # (pair,)

        rows = []
        for k in range(pairs):
            period = {"pair": k + 1, "from": labels[k], "to": labels[k + 1]}
            rows.append({**period, "target": "any change", "pixels": int(per_pair[k])})
            for t, name in enumerate(targets):
                rows.append({**period, "target": name, "pixels": int(per_target[k, t])})
        areas = pd.DataFrame(rows)
        areas["area_ha"] = areas["pixels"] * pixel_ha
        over_time = areas.pivot(index="to", columns="target", values="area_ha")[["any change", *targets]]
        over_time
        """,
    ),
    (
        "md",
        """
        The same as a chart, drawn with the project's NumPy helpers (`pipeline.sequence.quicklook`;
        no matplotlib needed), each target in its class colour:
        """,
    ),
    (
        "code",
        """
        from IPython.display import display
        from PIL import Image

        from pipeline.publish.legend import class_colour
        from pipeline.sequence.quicklook import draw_area_chart

        colours = {name: class_colour(name, classes.index(name) if name in classes else i) for i, name in enumerate(targets)}
        chart = draw_area_chart(
            labels[1:],  # pair k ends in window k + 1
            {name: over_time[name].tolist() for name in targets},
            colours,
            "changed area per period (ha)",
        )
        display(Image.fromarray(chart))
        """,
    ),
    (
        "md",
        """
        ## When did it first change?

        `first_change` holds, for each pixel, the window after the first pair that changed
        (0: never, 65535: no pair had data). Below it is mapped in the colours of its COG
        (early dark blue to late yellow, unchanged white), once for any change and once per target;
        then the area that first changed in each window, and the layer turned into real dates.
        """,
    ),
    (
        "code",
        """
        from pipeline.sequence.cogs import read_sequence_grid
        from pipeline.sequence.quicklook import compose_date_map

        grid = read_sequence_grid(SEQUENCE / "sequence.zarr")
        display(Image.fromarray(compose_date_map(grid).image))
        for name in targets:
            display(Image.fromarray(compose_date_map(grid, name).image))
        """,
    ),
    (
        "code",
        """
        import dask.array as da

        first = seq["first_change"]
        flat = first.data.ravel()
        binned = da.where(flat == NODATA, len(windows) + 1, flat).astype("int64")  # nodata last
        counts = da.bincount(binned, minlength=len(windows) + 2).compute()
        print(f"never changed: {counts[0] * pixel_ha:,.2f} ha;  no data: {counts[-1] * pixel_ha:,.2f} ha")
        for k in range(2, len(windows) + 1):
            print(f"first changed in window {k} ({labels[k - 1]}): {counts[k] * pixel_ha:,.2f} ha")

        # Every pixel with a first change changed at least once, and the other way round.
        n_changes = seq["n_changes"]
        assert int(counts[1 : len(windows) + 1].sum()) == int(((n_changes > 0) & (n_changes != NODATA)).sum())
        """,
    ),
    (
        "code",
        """
        # The window numbers as dates (the start of the window in which the change was first seen).
        starts = pd.to_datetime([w.split("/")[0] for w in windows], utc=True).tz_convert(None).to_numpy()
        lookup = np.concatenate([[np.datetime64("NaT", "ns")], starts])  # index 0: never changed


        def as_dates(values):
            return lookup[np.where(values == NODATA, 0, values)]


        first_date = xr.apply_ufunc(as_dates, first, dask="parallelized", output_dtypes=["datetime64[ns]"])
        first_date.name = "first_change_date"
        seen = int(first_date.notnull().sum())
        assert seen == int(counts[1 : len(windows) + 1].sum())
        if seen:
            print(f"{seen:,} pixels changed, first seen from {first_date.min(skipna=True).values} to {first_date.max(skipna=True).values}")
        first_date
        """,
    ),
    (
        "md",
        """
        ## The published files

        When the sequence's outputs are published, its folder also holds COGs of the date layers
        (`first_change.tif`, ...; a colour table over the window numbers, the windows' dates as
        `WINDOW_k` tags) and the quick-looks (a strip PNG of every window and pair, a GIF with a
        frame per pair). The cells below open them where they exist.
        """,
    ),
    (
        "code",
        """
        import rasterio
        from IPython.display import Image as FileImage

        found = [p for p in sorted(SEQUENCE.rglob("first_change.tif")) if "pairs" not in p.relative_to(SEQUENCE).parts]
        if found:
            with rasterio.open(found[0]) as cog:
                print(found[0], cog.crs, cog.shape, "nodata", cog.nodata)
                print("\\n".join(f"  {key}={value}" for key, value in sorted(cog.tags().items()) if key.startswith("WINDOW_")))
                assert [cog.tags()[f"WINDOW_{k}"] for k in range(1, len(windows) + 1)] == windows
                h, w = cog.shape
                rows, cols = slice(max(0, h // 2 - 128), h // 2 + 128), slice(max(0, w // 2 - 128), w // 2 + 128)
                window = rasterio.windows.Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
                np.testing.assert_array_equal(cog.read(1, window=window), first[rows, cols].values)
            print("first_change.tif equals the cube's first_change over the middle of the grid")
        else:
            print("no first_change.tif in", SEQUENCE, "(not published yet)")
        for name in ("sequence_strip.png", "sequence.gif"):
            for path in sorted(SEQUENCE.rglob(name))[:1]:
                print(path)
                display(FileImage(filename=str(path)))
        """,
    ),
]

#: The notebooks: file name -> cells.
NOTEBOOKS: dict[str, list[Cell]] = {
    "01_open_change_cube.ipynb": NB01,
    "02_stac_item.ipynb": NB02,
    "03_evaluate_against_truth.ipynb": NB03,
    "04_sequence.ipynb": NB04,
}


def build_notebook(name: str, cells: list[Cell]) -> NotebookNode:
    """Build one notebook, with stable cell ids and no outputs.

    Parameters
    ----------
    name
        The notebook's file name (its stem prefixes the cell ids).
    cells
        ``("md" | "code", source)`` pairs; sources are dedented and stripped.

    Returns
    -------
    nbformat.NotebookNode
    """
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    prefix = Path(name).stem.split("_")[0]
    for i, (kind, source) in enumerate(cells):
        text = dedent(source).strip("\n")
        cell = nbformat.v4.new_markdown_cell(text) if kind == "md" else nbformat.v4.new_code_cell(text)
        cell.id = f"nb{prefix}-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def write_notebooks(out_dir: Path) -> list[Path]:
    """Write every notebook of :data:`NOTEBOOKS` into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, cells in NOTEBOOKS.items():
        path = out_dir / name
        path.write_text(nbformat.writes(build_notebook(name, cells)) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    for p in write_notebooks(target):
        print(p)
