"""Synthetic multispectral scenes with known land cover and change, on a real UTM grid.

A scene is fully determined by a :class:`SceneSpec` (same spec, same bytes). It has two epochs
("before", "after") of a few Sentinel-2-like acquisitions each (six surface-reflectance bands
plus a ``qa`` cloud/shadow band, uint16 DN with scale 0.0001), the land cover of each epoch and
the change between them as ground truth, written as COGs with STAC metadata::

    from rasterio.windows import Window
    from pipeline.synthetic import SceneSpec, generate_scene, truth_window

    scene = generate_scene(SceneSpec(size=512, seed=1), "out/scene")
    before, after, change = truth_window(scene.spec, Window(0, 0, 256, 256))

Modules, one job each: :mod:`~pipeline.synthetic.noise` (deterministic noise on the global
pixel grid), :mod:`~pipeline.synthetic.spec` (parameters, acquisition dates),
:mod:`~pipeline.synthetic.landscape` (land cover, change events, the legend),
:mod:`~pipeline.synthetic.spectra` (bands, class signatures, DN encoding),
:mod:`~pipeline.synthetic.atmosphere` (clouds, shadows, ``qa``),
:mod:`~pipeline.synthetic.stac` (Items, Collection, static catalog),
:mod:`~pipeline.synthetic.rasters` (block-by-block COG writing) and
:mod:`~pipeline.synthetic.writer` (the scene folder: generate, open, reuse).
"""

from pipeline.synthetic.atmosphere import QA, SHADOW_OFFSET, acquisition_window, cloud_cover
from pipeline.synthetic.landscape import (
    COARSE_GROUPS,
    LAND_COVER_PROMPTS,
    ChangeType,
    LandCover,
    Landscape,
    change_map,
    class_map,
    landscape_window,
    truth_window,
)
from pipeline.synthetic.spec import Acquisition, Epoch, SceneSpec, acquisitions
from pipeline.synthetic.spectra import BAND_NAMES, BANDS, NODATA, OFFSET, SCALE, Band, surface_reflectance
from pipeline.synthetic.writer import (
    GENERATOR_VERSION,
    GeneratedScene,
    ensure_scene,
    generate_scene,
    iter_blocks,
    open_scene,
    scene_is_current,
)

__all__ = [
    "COARSE_GROUPS",
    "GENERATOR_VERSION",
    "LAND_COVER_PROMPTS",
    "BANDS",
    "BAND_NAMES",
    "NODATA",
    "OFFSET",
    "QA",
    "SCALE",
    "SHADOW_OFFSET",
    "Acquisition",
    "Band",
    "ChangeType",
    "Epoch",
    "GeneratedScene",
    "LandCover",
    "Landscape",
    "SceneSpec",
    "acquisition_window",
    "acquisitions",
    "change_map",
    "class_map",
    "cloud_cover",
    "ensure_scene",
    "generate_scene",
    "iter_blocks",
    "landscape_window",
    "open_scene",
    "scene_is_current",
    "surface_reflectance",
    "truth_window",
]
