"""Quick-look PNGs of a change result: the two dates side by side with the change map and a legend.

A quick-look is one picture a person opens to see what a run found: the *before* and *after*
images (true colour, percentile-stretched), and a third panel with the after image in dimmed grey
and every changed pixel painted in the colour of its transition, with a legend below.

The picture is composed as a NumPy array, with a small built-in 5x7 bitmap font for the titles
and the legend, and written with rasterio's PNG driver (GDAL). Neither matplotlib nor Pillow is
needed, so it runs on any worker that can run the pipeline. Text is drawn in capitals only.

Example::

    from pipeline.quicklook import render_quicklook

    render_quicklook(
        before_rgb, after_rgb, transition_codes,
        labels={9: "vegetation -> built-up", 14: "bare soil -> built-up"},
        colours={9: (230, 25, 75), 14: (255, 225, 25)},
        path="out/quicklook.png",
    )
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from numpy.typing import ArrayLike, NDArray
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

from pipeline.errors import QuicklookError

__all__ = [
    "GLYPH_HEIGHT",
    "GLYPH_WIDTH",
    "QuicklookError",
    "compose_quicklook",
    "draw_text",
    "render_quicklook",
    "stretch_rgb",
    "text_size",
]

U8 = NDArray[np.uint8]
Colour = tuple[int, int, int]


#: Glyph cell of the bitmap font, in font pixels (before scaling).
GLYPH_WIDTH, GLYPH_HEIGHT = 5, 7
_ADVANCE = GLYPH_WIDTH + 1  # one blank column between glyphs

# A classic 5x7 font, capitals, digits and the punctuation that labels use; '#' is ink.
_FONT_ROWS: dict[str, str] = {
    "A": ".###. #...# #...# ##### #...# #...# #...#",
    "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.",
    "D": "####. #...# #...# #...# #...# #...# ####.",
    "E": "##### #.... #.... ####. #.... #.... #####",
    "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####",
    "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.",
    "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.",
    "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.",
    "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "##### ...#. ..#.. ...#. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
    " ": "..... ..... ..... ..... ..... ..... .....",
    "-": "..... ..... ..... ##### ..... ..... .....",
    ">": ".#... ..#.. ...#. ....# ...#. ..#.. .#...",
    "<": "...#. ..#.. .#... #.... .#... ..#.. ...#.",
    ".": "..... ..... ..... ..... ..... .##.. .##..",
    ",": "..... ..... ..... ..... .##.. ..#.. .#...",
    "%": "##... ##..# ...#. ..#.. .#... #..## ...##",
    "(": "...#. ..#.. .#... .#... .#... ..#.. ...#.",
    ")": ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
    ":": "..... .##.. .##.. ..... .##.. .##.. .....",
    "/": "..... ....# ...#. ..#.. .#... #.... .....",
    "_": "..... ..... ..... ..... ..... ..... #####",
    "=": "..... ..... ##### ..... ##### ..... .....",
    "+": "..... ..#.. ..#.. ##### ..#.. ..#.. .....",
    "'": "..#.. ..#.. .#... ..... ..... ..... .....",
    "?": ".###. #...# ....# ...#. ..#.. ..... ..#..",
}
_FONT: dict[str, NDArray[np.bool_]] = {
    ch: np.array([[c == "#" for c in row] for row in rows.split()], dtype=bool)
    for ch, rows in _FONT_ROWS.items()
}

_WHITE: Colour = (255, 255, 255)
_BLACK: Colour = (0, 0, 0)
_MARGIN = 10
_GAP = 10


def text_size(text: str, scale: int = 2) -> tuple[int, int]:
    """``(width, height)`` in pixels of ``text`` drawn by :func:`draw_text` at ``scale``."""
    if not text:
        return (0, GLYPH_HEIGHT * scale)
    return ((len(text) * _ADVANCE - 1) * scale, GLYPH_HEIGHT * scale)


def draw_text(
    canvas: U8,
    x: int,
    y: int,
    text: str,
    colour: Colour = _BLACK,
    scale: int = 2,
    max_width: int | None = None,
) -> int:
    """Draw ``text`` in capitals with its upper-left corner at ``(x, y)``; return the width drawn.

    Parameters
    ----------
    canvas
        ``(H, W, 3)`` ``uint8`` image, changed in place. Glyphs outside it are clipped.
    x, y
        Column and row of the upper-left corner of the first glyph.
    text
        The text; characters the font lacks are drawn as ``?``.
    colour
        RGB of the ink.
    scale
        Size of a font pixel in image pixels (2 gives 10x14 px glyphs).
    max_width
        Stop before a glyph that would end beyond ``x + max_width``.

    Returns
    -------
    int
        Width in pixels of the glyphs drawn.
    """
    height, width = canvas.shape[:2]
    drawn = 0
    for i, ch in enumerate(text.upper()):
        gx = x + i * _ADVANCE * scale
        if max_width is not None and (i * _ADVANCE + GLYPH_WIDTH) * scale > max_width:
            break
        glyph = _FONT.get(ch, _FONT["?"])
        big = np.repeat(np.repeat(glyph, scale, axis=0), scale, axis=1)
        y0, x0 = max(y, 0), max(gx, 0)
        y1, x1 = min(y + big.shape[0], height), min(gx + big.shape[1], width)
        if y1 > y0 and x1 > x0:
            ink = big[y0 - y : y1 - y, x0 - gx : x1 - gx]
            canvas[y0:y1, x0:x1][ink] = colour
        drawn = (i * _ADVANCE + GLYPH_WIDTH) * scale
    return drawn


def stretch_rgb(rgb: ArrayLike, percentiles: tuple[float, float] = (2.0, 98.0)) -> U8:
    """Stretch a true-colour image to ``uint8``, each band between two of its percentiles.

    Parameters
    ----------
    rgb
        ``(H, W, 3)`` red, green, blue in any numeric scale (reflectance, DN). NaN is no data.
    percentiles
        Low and high percentile of each band's finite values mapped to 0 and 255.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` ``uint8``; no-data pixels are black.

    Raises
    ------
    QuicklookError
        If the array is not ``(H, W, 3)`` or the percentiles are not ``0 <= low < high <= 100``.
    """
    image = np.asarray(rgb)
    if image.ndim != 3 or image.shape[2] != 3:
        raise QuicklookError(
            f"an RGB image must be (H, W, 3), got shape {image.shape}; "
            "move the band axis last (e.g. np.moveaxis(image, 0, -1))"
        )
    low, high = percentiles
    if not 0.0 <= low < high <= 100.0:
        raise QuicklookError(f"percentiles {percentiles} must satisfy 0 <= low < high <= 100")
    out = np.zeros(image.shape, dtype=np.uint8)
    for band in range(3):
        out[..., band] = _stretch_band(image[..., band], low, high)
    return out


def _stretch_band(band: NDArray[Any], low: float, high: float) -> U8:
    """One band of :func:`stretch_rgb`, worked on in place in one float64 copy of the band.

    The same float64 operations, in the same order, as ``np.where(finite, np.rint(np.clip((
    np.nan_to_num(v, nan=lo) - lo) / span, 0, 1) * 255), 0)``, so the same bytes, with a third of
    the memory traffic and one band's temporaries instead of the whole image's.
    """
    values = np.array(band, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8)
    # overwrite_input: the percentiles partition the finite values' copy itself, not a copy of it.
    lo, hi = np.percentile(values[finite], [low, high], overwrite_input=True)
    span = hi - lo if hi > lo else 1.0
    np.nan_to_num(values, copy=False, nan=lo)
    np.subtract(values, lo, out=values)
    np.divide(values, span, out=values)
    np.clip(values, 0.0, 1.0, out=values)
    np.multiply(values, 255, out=values)
    np.rint(values, out=values)
    values[~finite] = 0
    return values.astype(np.uint8)


def _upscale(image: U8, scale: int) -> U8:
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1) if scale > 1 else image


def _check(
    code_map: NDArray[Any],
    before: U8,
    after: U8,
    labels: Mapping[int, str],
    colours: Mapping[int, Colour],
    titles: Sequence[str],
    scale: int,
    font_scale: int,
) -> set[int]:
    """Check the arguments of :func:`compose_quicklook`; return the changed codes present."""
    if before.shape[:2] != code_map.shape or after.shape[:2] != code_map.shape:
        raise QuicklookError(
            f"before {before.shape[:2]}, after {after.shape[:2]} and codes {code_map.shape} must "
            "cover the same pixels"
        )
    if len(titles) != 3:
        raise QuicklookError(f"give three panel titles (before, after, change), got {len(titles)}")
    if scale < 1 or font_scale < 1:
        raise QuicklookError(f"scale={scale} and font_scale={font_scale} must be positive integers")
    present = {int(c) for c in np.unique(code_map) if c >= 0}
    unlabelled = sorted(present - set(labels))
    uncoloured = sorted(set(labels) - set(colours))
    if unlabelled or uncoloured:
        raise QuicklookError(
            f"codes without a label {unlabelled} / labels without a colour {uncoloured}: give every "
            "changed code present a label and every label a colour (merge rare codes into one first)"
        )
    return present


def _change_panel(after: U8, code_map: NDArray[Any], present: set[int], colours: Mapping[int, Colour]) -> U8:
    """The after image in dimmed grey, changed pixels in their transition colour."""
    grey = (after.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)) * 0.45 + 40
    change = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
    for code in present:
        change[code_map == code] = colours[code]
    return change


def _draw_legend(
    canvas: U8, top: int, entries: Sequence[tuple[Colour, str]], columns: int, row_h: int, font_scale: int
) -> None:
    """Draw the legend's swatches and labels from row ``top``, in ``columns`` columns."""
    swatch = GLYPH_HEIGHT * font_scale
    col_w = (canvas.shape[1] - 2 * _MARGIN) // columns
    for n, (colour, text) in enumerate(entries):
        r, c = divmod(n, columns)
        ex, ey = _MARGIN + c * col_w, top + r * row_h
        canvas[ey : ey + swatch, ex : ex + swatch] = _BLACK
        canvas[ey + 1 : ey + swatch - 1, ex + 1 : ex + swatch - 1] = colour
        draw_text(
            canvas, ex + swatch + _GAP, ey, text, _BLACK, font_scale, max_width=col_w - swatch - 2 * _GAP
        )


def compose_quicklook(
    before_rgb: ArrayLike,
    after_rgb: ArrayLike,
    codes: ArrayLike,
    labels: Mapping[int, str],
    colours: Mapping[int, Colour],
    *,
    titles: Sequence[str] = ("before", "after", "change"),
    scale: int = 1,
    font_scale: int = 2,
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> U8:
    """Compose the quick-look image in memory (see :func:`render_quicklook`).

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` ``uint8`` picture.

    Raises
    ------
    QuicklookError
        See :func:`render_quicklook`.
    """
    code_map = np.asarray(codes)
    if code_map.ndim != 2 or not np.issubdtype(code_map.dtype, np.integer):
        raise QuicklookError(
            f"codes must be a 2-D integer array (transition codes, negative = unchanged), got "
            f"{code_map.dtype} of shape {code_map.shape}"
        )
    # The two dates are stretched at the same time: numpy releases the GIL in the percentiles
    # and the arithmetic, and the quick-look is the longest step of publishing a small grid.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stretch") as pool:
        stretched_before = pool.submit(stretch_rgb, before_rgb, percentiles)
        after = stretch_rgb(after_rgb, percentiles)
        before = stretched_before.result()
    present = _check(code_map, before, after, labels, colours, titles, scale, font_scale)
    change = _change_panel(after, code_map, present, colours)

    panels = [_upscale(p, scale) for p in (before, after, change)]
    ph, pw = panels[0].shape[:2]
    line = GLYPH_HEIGHT * font_scale
    title_h = line + _GAP
    width = 2 * _MARGIN + 3 * pw + 2 * _GAP

    # Legend: swatch + label, laid out in as many columns as fit the width.
    entries = [(colours[c], labels[c]) for c in labels]
    entry_w = max((line + _GAP + text_size(t, font_scale)[0] for _, t in entries), default=0) + 2 * _GAP
    columns = max(1, min(len(entries), (width - 2 * _MARGIN) // max(entry_w, 1))) if entries else 1
    rows = -(-len(entries) // columns) if entries else 0
    row_h = line + _GAP // 2 + 2
    legend_h = (_GAP + rows * row_h) if rows else 0
    height = 2 * _MARGIN + title_h + ph + legend_h

    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    top = _MARGIN + title_h
    for i, (panel, title) in enumerate(zip(panels, titles, strict=True)):
        left = _MARGIN + i * (pw + _GAP)
        draw_text(canvas, left, _MARGIN, title, _BLACK, font_scale, max_width=pw)
        canvas[top : top + ph, left : left + pw] = panel
    _draw_legend(canvas, top + ph + _GAP, entries, columns, row_h, font_scale)
    return canvas


def render_quicklook(
    before_rgb: ArrayLike,
    after_rgb: ArrayLike,
    codes: ArrayLike,
    labels: Mapping[int, str],
    colours: Mapping[int, Colour],
    path: str | Path,
    *,
    titles: Sequence[str] = ("before", "after", "change"),
    scale: int = 1,
    font_scale: int = 2,
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> Path:
    """Write a quick-look PNG: before, after, and the change coloured by transition, with a legend.

    Parameters
    ----------
    before_rgb, after_rgb
        ``(H, W, 3)`` true-colour images (red, green, blue) in any numeric scale; each band is
        stretched between its ``percentiles``. NaN is no data (black).
    codes
        ``(H, W)`` integer transition codes (e.g.
        :attr:`seg2change_core.fusion.FusedChange.transition`); negative means unchanged.
    labels
        Legend text of each code; the legend lists them in this order. Every non-negative code
        present in ``codes`` needs one (merge rare transitions into one code beforehand).
    colours
        RGB colour (0-255) of each labelled code.
    path
        The PNG to write; its folder is created, an existing file is replaced.
    titles
        Titles of the three panels.
    scale
        Integer enlargement of the panels (nearest neighbour), so sparse changes stay visible.
    font_scale
        Size of a font pixel in image pixels.
    percentiles
        Low and high percentile of the stretch.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    QuicklookError
        If the arrays disagree in shape, a present code has no label or a label no colour, or a
        parameter is out of range.
    """
    canvas = compose_quicklook(
        before_rgb,
        after_rgb,
        codes,
        labels,
        colours,
        titles=titles,
        scale=scale,
        font_scale=font_scale,
        percentiles=percentiles,
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_png(canvas, out)
    return out


def _write_png(canvas: U8, out: Path) -> None:
    """Encode ``(H, W, 3)`` as a PNG with GDAL's PNG driver.

    The picture is copied from an in-memory dataset (``rasterio.shutil.copy``), which encodes
    without holding Python's GIL: writing in the PNG driver's own ``"w"`` mode encoded while
    holding it (3.6 s at 2,048 px, with the COG and statistics threads of publishing stopped).
    The bytes are the same.
    """
    height, width = canvas.shape[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with (
            rasterio.Env(GDAL_PAM_ENABLED="NO"),
            MemoryFile() as memory,
            memory.open(driver="MEM", width=width, height=height, count=3, dtype="uint8") as picture,
        ):
            picture.write(np.moveaxis(canvas, -1, 0))
            rasterio.shutil.copy(picture, out, driver="PNG")
