"""Names and colours of the codes in the published layers: one legend for the COGs, the statistics
and the quick-look.

- ``class_before``/``class_after``: code ``i`` is class ``classes[i]`` (background first when the
  job has one); 255 is nodata.
- ``change``: 0 unchanged, 1 changed, 255 nodata.
- ``transition``: ``before * K + after`` (``K = len(classes)``) where the pixel changed;
  :data:`~pipeline.change_cube.TRANSITION_NO_CHANGE` (65534) where it did not, 65535 nodata. A code
  whose two classes are equal is a change the change model found where the segmenter saw the same
  class on both dates (a new building on a built-up area, a burned forest still called forest): it
  is named ``"changed, class unchanged (<class>)"``, never ``"<class> -> <class>"``.

Class colours reuse the synthetic truth rasters' palette (:class:`pipeline.synthetic.landscape.LandCover`)
for the classes it knows by name or synonym (water blue, forest green, building red...), and a
qualitative palette for the others. A transition is drawn in the colour of its class after the
change; same-class changes in grey; unchanged pixels in white. A GeoTIFF colour table has no alpha,
so nodata is transparent through the file's nodata value, not through its colour.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.change_cube import TRANSITION_NO_CHANGE, TRANSITION_NODATA, UINT8_NODATA
from pipeline.synthetic.landscape import COARSE_GROUPS, LAND_COVER_PROMPTS, LandCover

__all__ = [
    "BACKGROUND_COLOUR",
    "CHANGE_NAMES",
    "SAME_CLASS",
    "SAME_CLASS_COLOUR",
    "UNCHANGED_COLOUR",
    "RGB",
    "RGBA",
    "change_colormap",
    "class_colour",
    "class_colormap",
    "transition_colormap",
    "transition_label",
    "transition_names",
]

RGB = tuple[int, int, int]
RGBA = tuple[int, int, int, int]

#: What a same-class transition is called (the statistics' ``kind`` and the quick-look's legend).
SAME_CLASS = "changed, class unchanged"
#: Names of the binary change codes 0 and 1.
CHANGE_NAMES = ("unchanged", "changed")
#: Colour of a background (no prompt matched) class.
BACKGROUND_COLOUR: RGB = (200, 200, 200)
#: Colour of same-class changes in the transition layer.
SAME_CLASS_COLOUR: RGB = (128, 128, 128)
#: Colour of unchanged pixels in the change and transition layers.
UNCHANGED_COLOUR: RGB = (255, 255, 255)
_UNCHANGED: RGBA = (*UNCHANGED_COLOUR, 255)
_NODATA: RGBA = (0, 0, 0, 255)
#: Colours of classes the truth palette does not know (Kelly / Trubetskoy, without the greys).
_PALETTE: tuple[RGB, ...] = (
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
    (0, 0, 128),
    (255, 215, 180),
    (128, 128, 0),
)


def _known_colours() -> dict[str, RGB]:
    colours: dict[str, RGB] = {}
    for cover, prompt in LAND_COVER_PROMPTS.items():
        colours[cover.label] = cover.color
        for synonym in prompt.split(","):
            colours.setdefault(synonym.strip().lower(), cover.color)
    for group, covers in COARSE_GROUPS.items():
        colours.setdefault(group, covers[-1].color)
    colours["background"] = BACKGROUND_COLOUR
    return colours


_KNOWN = _known_colours()


def class_colour(label: str, index: int) -> RGB:
    """Colour of class ``label`` (channel ``index``): the truth palette's when it knows the name
    (``"bare_soil"`` and ``"bare soil"`` alike), else the ``index``-th of a qualitative palette."""
    name = label.strip().lower().replace("_", " ")
    return _KNOWN.get(name) or _PALETTE[index % len(_PALETTE)]


def class_colormap(classes: Sequence[str]) -> dict[int, RGBA]:
    """GDAL colour table of a class map: one colour per class, nodata black."""
    table = {i: (*class_colour(c, i), 255) for i, c in enumerate(classes)}
    table[UINT8_NODATA] = _NODATA
    return table


def change_colormap() -> dict[int, RGBA]:
    """GDAL colour table of the binary change layer: unchanged white, changed red, nodata black."""
    return {0: _UNCHANGED, 1: (*LandCover.BUILDING.color, 255), UINT8_NODATA: _NODATA}


def transition_label(classes: Sequence[str], code: int) -> str:
    """Name of a transition code: ``"water -> building"``, or ``"changed, class unchanged (forest)"``.

    Raises
    ------
    ValueError
        When ``code`` is not a transition of ``len(classes)`` classes.
    """
    k = len(classes)
    if not 0 <= code < k * k:
        raise ValueError(
            f"transition code {code} is not one of the {k * k} codes of {k} classes "
            f"({TRANSITION_NO_CHANGE} is 'unchanged', {TRANSITION_NODATA} nodata)"
        )
    before, after = divmod(code, k)
    if before == after:
        return f"{SAME_CLASS} ({classes[before]})"
    return f"{classes[before]} -> {classes[after]}"


def transition_names(classes: Sequence[str]) -> list[str]:
    """Category names of the transition codes ``0 .. K*K - 1``, in code order."""
    return [transition_label(classes, code) for code in range(len(classes) ** 2)]


def transition_colormap(classes: Sequence[str]) -> dict[int, RGBA]:
    """GDAL colour table of the transition layer: the class-after colour per code, same-class
    changes grey, unchanged white, nodata black."""
    k = len(classes)
    table: dict[int, RGBA] = {}
    for code in range(k * k):
        before, after = divmod(code, k)
        colour = SAME_CLASS_COLOUR if before == after else class_colour(classes[after], after)
        table[code] = (*colour, 255)
    table[TRANSITION_NO_CHANGE] = _UNCHANGED
    table[TRANSITION_NODATA] = _NODATA
    return table
