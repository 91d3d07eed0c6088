"""Publishing with its steps overlapped (COG layers in threads beside the statistics and the
quick-look) and the COGs staged on disk writes the same bytes as one step after the other.

A small input cube (changes, a cloud, a nodata row, 128-px chunks) goes through the real engine
(classical CVA baseline + spectral segmenter, one in-process worker).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine
from engine_inputs import ORIGIN, run_small_engine, write_patch_cube

import pipeline.publish.cogs as cogs_module
from pipeline.errors import PublishError
from pipeline.publish import (
    ALL_ZONE,
    ChangeCubeInfo,
    ChangeStatistics,
    compute_statistics,
    describe_change_cube,
    publish,
    write_cogs,
    write_quicklook,
)
from pipeline.publish.quicklooks import _rgb
from pipeline.quicklook import compose_quicklook, render_quicklook, stretch_rgb
from pipeline.spec import JobSpec
from pipeline.storage import Location

pytestmark = pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 specification")

HEIGHT, WIDTH = 300, 260
PROVENANCE: dict[str, Any] = {
    "catalog": "https://stac.example.com/v1",
    "collections": ["sentinel-2-l2a"],
    "cloud_limit": 50.0,
    "items": {"before": [], "after": []},
}


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> JobSpec:
    return JobSpec.build(
        aoi={
            "bbox": (ORIGIN[0], ORIGIN[1] - 10 * HEIGHT, ORIGIN[0] + 10 * WIDTH, ORIGIN[1]),
            "crs": "EPSG:32633",
        },
        before="2023-06-01/2023-06-30",
        after="2024-06-01/2024-06-30",
        catalog=PROVENANCE["catalog"],
        collections="sentinel-2-l2a",
        grid={"crs": "EPSG:32633"},
        output=str(tmp_path_factory.mktemp("run")),
    )


@pytest.fixture(scope="module")
def run(job: JobSpec) -> tuple[Path, Path]:
    out = Path(job.output)
    clouds = ((0, slice(90, 130), slice(60, 120)),)
    cube = write_patch_cube(
        out / "input_cube.zarr", HEIGHT, WIDTH, chunk=128, seed=5, change_fraction=0.25, gaps=clouds
    )
    return cube, run_small_engine(job, cube, out / "change_cube.zarr").path


@pytest.fixture(scope="module")
def info(run: tuple[Path, Path]) -> ChangeCubeInfo:
    return describe_change_cube(run[1])


def files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_cog_layers_in_threads_are_byte_identical_to_one_at_a_time(
    info: ChangeCubeInfo, tmp_path: Path
) -> None:
    one = write_cogs(info, tmp_path / "one", workers=1)
    three = write_cogs(info, tmp_path / "three", workers=3)
    assert list(three) == list(one) == list(cogs_module.COG_LAYERS)
    assert files(tmp_path / "three") == files(tmp_path / "one")
    assert len(files(tmp_path / "one")) == 9  # five COGs and four category files


def test_cogs_staged_on_disk_equal_rio_cogeo_in_memory(
    info: ChangeCubeInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The COGs are staged on disk at every size; below 120 Mpx rio-cogeo would have used memory."""
    seen: list[bool | None] = []
    translate = cogs_module.cog_translate

    def in_memory(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("in_memory"))
        return translate(*args, **{**kwargs, "in_memory": True})

    disk = write_cogs(info, tmp_path / "disk")
    monkeypatch.setattr(cogs_module, "cog_translate", in_memory)
    write_cogs(info, tmp_path / "memory")
    assert seen == [False] * len(disk)
    assert files(tmp_path / "disk") == files(tmp_path / "memory")


def test_the_staging_compression_leaves_the_cog_bytes_as_they_were(
    info: ChangeCubeInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staging in ZSTD level 1 (fast) gives the bytes that DEFLATE staging (before) gave."""
    staged: list[str] = []
    translate = cogs_module.cog_translate

    def spy(source: str, *args: Any, **kwargs: Any) -> Any:
        with rasterio.open(source) as src:
            staged.append(src.profile["compress"])
        return translate(source, *args, **kwargs)

    monkeypatch.setattr(cogs_module, "cog_translate", spy)
    zstd = write_cogs(info, tmp_path / "zstd")
    monkeypatch.setattr(cogs_module, "STAGING_COMPRESSION", {"compress": "deflate"})
    write_cogs(info, tmp_path / "deflate")
    assert len(zstd) == 5
    assert staged == ["zstd"] * 5 + ["deflate"] * 5
    assert files(tmp_path / "zstd") == files(tmp_path / "deflate")


def test_rio_cogeos_uncompressed_intermediate_file_leaves_the_cog_bytes_as_they_were(
    info: ChangeCubeInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rio-cogeo's intermediate file is left uncompressed (less CPU); DEFLATE there (before) gave the same COGs."""
    seen: list[bool] = []
    translate = cogs_module.cog_translate

    def intermediate(compressed: bool) -> Any:
        def spy(*args: Any, **kwargs: Any) -> Any:
            seen.append(kwargs["allow_intermediate_compression"])
            return translate(*args, **{**kwargs, "allow_intermediate_compression": compressed})

        return spy

    monkeypatch.setattr(cogs_module, "cog_translate", intermediate(False))
    write_cogs(info, tmp_path / "raw")
    monkeypatch.setattr(cogs_module, "cog_translate", intermediate(True))
    write_cogs(info, tmp_path / "deflate")
    assert seen == [False] * 10
    assert len(files(tmp_path / "raw")) == 9
    assert files(tmp_path / "raw") == files(tmp_path / "deflate")


def test_compressing_a_cogs_tiles_in_threads_leaves_its_bytes_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nine full-resolution tiles and two overview levels, compressed by four threads or by one."""
    rng = np.random.default_rng(11)
    pixels = np.cumsum(rng.random((1100, 1300), dtype=np.float32), axis=1) / 1300
    staging = tmp_path / "staging.tif"
    with rasterio.open(
        staging, "w", driver="GTiff", width=1300, height=1100, count=1, dtype="float32",
        tiled=True, blockxsize=512, blockysize=512, crs="EPSG:32633", transform=Affine(10, 0, 5e5, 0, -10, 5e6),
    ) as dst:  # fmt: skip
        dst.write(pixels, 1)
    written = {}
    for threads in (4, 1):
        monkeypatch.setattr(cogs_module, "compression_threads", lambda n=threads: n)
        target = tmp_path / f"threads-{threads}.tif"
        cogs_module.translate_to_cog(staging, target, "test", predictor=3, overview_resampling="average")
        written[threads] = target.read_bytes()
        with rasterio.open(target) as cog:
            assert cog.overviews(1) == [2, 4] and np.array_equal(cog.read(1), pixels)
    assert written[4] == written[1]


def _stretch_in_one_expression(rgb: np.ndarray, low: float, high: float) -> np.ndarray:
    """The stretch as first written (whole image in float64, one temporary per operation)."""
    image = np.asarray(rgb, dtype=np.float64)
    out = np.zeros(image.shape, dtype=np.uint8)
    for band in range(3):
        values = image[..., band]
        finite = np.isfinite(values)
        if not finite.any():
            continue
        lo, hi = np.percentile(values[finite], [low, high])
        span = hi - lo if hi > lo else 1.0
        scaled = np.clip((np.nan_to_num(values, nan=lo) - lo) / span, 0.0, 1.0)
        out[..., band] = np.where(finite, np.rint(scaled * 255), 0).astype(np.uint8)
    return out


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("percentiles", [(2.0, 98.0), (0.0, 100.0), (10.0, 60.0)])
def test_the_in_place_stretch_gives_the_bytes_of_the_one_expression_stretch(
    percentiles: tuple[float, float],
) -> None:
    rng = np.random.default_rng(3)
    reflectance = (rng.random((90, 70, 3)) * 0.3).astype(np.float32)
    reflectance[5:20, 5:50] = np.nan  # a cloud
    reflectance[0, 0, 1], reflectance[1, 1, 2] = np.inf, -np.inf
    counts = rng.integers(0, 10_000, (40, 30, 3)).astype(np.uint16)
    flat = np.ones((12, 10, 3))
    flat[..., 2] = np.nan  # one band without data, one constant
    for image in (reflectance, counts, flat, rng.normal(size=(33, 65, 3))):
        expected = _stretch_in_one_expression(image, *percentiles)
        assert np.array_equal(stretch_rgb(image, percentiles), expected)
    assert stretch_rgb(reflectance, percentiles)[10, 10].tolist() == [0, 0, 0]


def test_overlapped_publish_writes_the_bytes_of_the_steps_run_one_after_the_other(
    job: JobSpec, run: tuple[Path, Path], info: ChangeCubeInfo, tmp_path: Path
) -> None:
    cube, change = run
    result = publish(job, change, cube, PROVENANCE, tmp_path / "out", progress=False)
    write_cogs(info, tmp_path / "steps" / "cogs", workers=1)
    stats = compute_statistics(info)
    assert result.statistics.to_frame().equals(stats.to_frame())
    published = files(tmp_path / "out")
    assert files(tmp_path / "steps" / "cogs") == {
        k.removeprefix("cogs/"): v for k, v in published.items() if k.startswith("cogs/")
    }
    titles = ("before jun 2023", "after jun 2024", "change by transition")
    write_quicklook(
        info,
        cube,
        tmp_path / "steps" / "quicklook.png",
        transition_pixels=_transition_pixels(stats, info),
        titles=titles,
    )
    assert (tmp_path / "steps" / "quicklook.png").read_bytes() == published["quicklook.png"]


def _transition_pixels(stats: ChangeStatistics, info: ChangeCubeInfo) -> dict[int, int]:
    """Changed pixels per transition code, as publish hands them to the quick-look."""
    k = len(info.classes)
    code = {c: i for i, c in enumerate(info.classes)}
    return {
        code[r.class_from] * k + code[r.class_to]: r.pixels
        for r in stats.zone_rows(ALL_ZONE)
        if r.kind in ("transition", "class_unchanged") and r.class_from is not None and r.class_to is not None
    }


def test_a_cog_that_fails_in_its_thread_fails_publish_before_any_stac(
    job: JobSpec, run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write = cogs_module.write_cog

    def failing(info: ChangeCubeInfo, layer: str, path: Path, **kwargs: Any) -> Any:
        if layer == "transition":
            raise PublishError("the COG written for transition is not valid (injected)")
        return write(info, layer, path, **kwargs)

    monkeypatch.setattr(cogs_module, "write_cog", failing)
    with pytest.raises(PublishError, match="transition is not valid"):
        publish(job, run[1], run[0], PROVENANCE, tmp_path, progress=False)
    assert not (tmp_path / "stac").exists()


def test_write_cogs_refuses_no_threads(info: ChangeCubeInfo, tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="at least 1 thread"):
        write_cogs(info, tmp_path, workers=0)


@pytest.mark.parametrize("stride", [1, 3])
def test_the_quicklook_reads_its_bands_in_one_pass_with_the_values_of_band_by_band_reads(
    run: tuple[Path, Path], stride: int
) -> None:
    cube = run[0]
    reflectance = zarr.open_array(str(cube), path="reflectance", mode="r")
    bands = [str(b) for b in np.asarray(zarr.open_array(str(cube), path="band", mode="r")[...])]
    index = [bands.index(b) for b in ("red", "green", "blue")]
    for epoch in (0, 1):
        one_by_one = np.stack(
            [np.asarray(reflectance[epoch, i, ::stride, ::stride], dtype=np.float32) for i in index], axis=-1
        )
        together = _rgb(Location.parse(cube), epoch, stride, (HEIGHT, WIDTH))
        assert together.shape == one_by_one.shape == (-(-HEIGHT // stride), -(-WIDTH // stride), 3)
        assert np.array_equal(together, one_by_one, equal_nan=True)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_the_quicklook_png_has_the_bytes_of_gdal_png_written_in_place(tmp_path: Path) -> None:
    """The PNG copied from memory (encoded without the GIL) is the file rasterio's PNG ``"w"`` mode wrote."""
    rng = np.random.default_rng(5)
    before = rng.random((60, 80, 3)) * 0.3
    after = before + rng.normal(0, 0.02, before.shape)
    codes = np.where(rng.random((60, 80)) < 0.1, 3, -1)
    labels, colours = {3: "water -> building"}, {3: (230, 25, 75)}
    render_quicklook(before, after, codes, labels, colours, tmp_path / "quicklook.png")
    canvas = compose_quicklook(before, after, codes, labels, colours)
    height, width = canvas.shape[:2]
    with (
        rasterio.Env(GDAL_PAM_ENABLED="NO"),
        rasterio.open(
            tmp_path / "in_place.png", "w", driver="PNG", width=width, height=height, count=3, dtype="uint8"
        ) as dst,
    ):
        dst.write(np.moveaxis(canvas, -1, 0))
    assert (tmp_path / "quicklook.png").read_bytes() == (tmp_path / "in_place.png").read_bytes()
    assert not list(tmp_path.glob("*.aux.xml"))
