"""Quick-looks of a sequence cube: a strip PNG of every window and pair, and an animated GIF over the pairs.

The strip has one column per window, titled with the window's start date: on top the window's
class map, below it the change of the pair that ends in that window (the first column's lower
cell explains the layout). The GIF has one frame per pair: the class map before, after, and the
change, titled with the two windows' dates. Both carry a legend of the classes (the colours of
:mod:`pipeline.publish.legend`, as in the change cube's COGs and quick-look) and of the change
(unchanged white, changed red, nodata black).

For a notebook or a report, :func:`compose_date_map` draws the first-change date (of all change or
of one target) in the colours of its COG, and :func:`draw_area_chart` a bar chart of the changed
area per period and target.

Big areas are read with a stride straight from the Zarr, so that a panel's longest side is at
most :data:`PANEL_SIDE` pixels; small ones are enlarged by an integer factor (as
:func:`pipeline.publish.quicklooks.quicklook_geometry` does for the run's quick-look). Text is
drawn with the bitmap font of :mod:`pipeline.quicklook`; the files are written with Pillow, the GIF
on one exact palette of the colours used (no dithering), and each replaces an earlier file only
once it is complete.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from numpy.typing import NDArray
from PIL import Image

from pipeline.errors import PublishError
from pipeline.publish.legend import CHANGE_NAMES, RGB, RGBA, change_colormap, class_colormap
from pipeline.publish.quicklooks import QuicklookGeometry, quicklook_geometry
from pipeline.quicklook import GLYPH_HEIGHT, draw_text, text_size
from pipeline.sequence.cogs import SequenceGrid, date_colormap, read_sequence_grid
from pipeline.sequence.cube import DATE_NODATA
from pipeline.storage import replace_atomically

__all__ = [
    "ANIMATION_NAME",
    "FRAME_MILLISECONDS",
    "PANEL_SIDE",
    "STRIP_NAME",
    "Figure",
    "SequencePanels",
    "compose_date_map",
    "compose_frame",
    "compose_strip",
    "draw_area_chart",
    "read_panels",
    "window_labels",
    "write_sequence_quicklooks",
]

U8 = NDArray[np.uint8]

#: File names in the output folder.
STRIP_NAME = "sequence_strip.png"
ANIMATION_NAME = "sequence.gif"
#: Longest side of a panel before enlargement, in pixels.
PANEL_SIDE = 256
#: How long each frame of the GIF is shown.
FRAME_MILLISECONDS = 1000
_MARGIN, _GAP, _FONT = 10, 10, 2
_WHITE: RGB = (255, 255, 255)
_BLACK: RGB = (0, 0, 0)
_FRAME: RGB = (128, 128, 128)
_NODATA_NAME = "nodata"
_EXPLANATION = ("above: class", "below: change", "since the", "window before")


def window_labels(windows: Sequence[str]) -> list[str]:
    """Short labels of the windows: the start date (``2024-03-01``), with the time when two share a day."""
    starts = [w.split("/")[0] for w in windows]
    days = [s[:10] for s in starts]
    if len(set(days)) == len(days):
        return days
    return [s[:16].replace("T", " ") for s in starts]


def _lookup(table: Mapping[int, RGBA]) -> U8:
    """A 256-entry RGB lookup of a uint8 colour table (codes it lacks in black)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    for code, colour in table.items():
        if 0 <= code < 256:
            lut[code] = colour[:3]
    return lut


@dataclass(frozen=True)
class SequencePanels:
    """The pictures the quick-looks are made of, read once from the cube.

    Attributes
    ----------
    classes
        RGB class map of each window, in window order.
    changes
        RGB change map of each pair, in pair order.
    geometry
        The stride and enlargement they were read and drawn with.
    legend
        ``(colour, name)`` entries: the classes, then the change codes and nodata.
    """

    classes: tuple[U8, ...]
    changes: tuple[U8, ...]
    geometry: QuicklookGeometry
    legend: tuple[tuple[RGB, str], ...]


def read_panels(grid: SequenceGrid, max_side: int = PANEL_SIDE) -> SequencePanels:
    """Read every window's class map and every pair's change, strided, as RGB panels."""
    geometry = quicklook_geometry(grid.height, grid.width, max_side)
    s, scale = geometry.stride, geometry.scale
    class_lut, change_lut = _lookup(class_colormap(grid.classes)), _lookup(change_colormap())

    def panel(name: str, index: int, lut: U8) -> U8:
        codes = np.asarray(zarr.open_array(str(grid.path), path=name, mode="r")[index, ::s, ::s])
        rgb = lut[codes]
        return np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1) if scale > 1 else rgb

    classes = tuple(panel("class", k, class_lut) for k in range(len(grid.windows)))
    changes = tuple(panel("change", k, change_lut) for k in range(grid.pairs))
    legend = [(_rgb(class_lut[i]), name) for i, name in enumerate(grid.classes)]
    legend += [(_rgb(change_lut[i]), name) for i, name in enumerate(CHANGE_NAMES)]
    legend.append((_BLACK, _NODATA_NAME))
    return SequencePanels(classes, changes, geometry, tuple(legend))


def _rgb(colour: U8) -> RGB:
    return (int(colour[0]), int(colour[1]), int(colour[2]))


@dataclass(frozen=True)
class Figure:
    """A composed picture and where its panels are.

    Attributes
    ----------
    image
        ``(H, W, 3)`` ``uint8``.
    panels
        Name (``class 3``, ``change 2``: window or pair number) -> ``(top, left)`` of the panel.
    """

    image: U8
    panels: Mapping[str, tuple[int, int]]


def _legend_layout(entries: Sequence[tuple[RGB, str]], width: int) -> tuple[int, int, int]:
    """Columns, column width and height of the legend for a picture ``width`` wide."""
    line = GLYPH_HEIGHT * _FONT
    entry = max(line + _GAP + text_size(name, _FONT)[0] for _, name in entries) + 2 * _GAP
    columns = max(1, min(len(entries), (width - 2 * _MARGIN) // entry))
    rows = -(-len(entries) // columns)
    return columns, (width - 2 * _MARGIN) // columns, _GAP + rows * (line + _GAP)


def _compose(
    cells: Sequence[Sequence[tuple[str, U8] | None]],
    titles: Sequence[str],
    legend: Sequence[tuple[RGB, str]],
    panel: tuple[int, int],
    note: Sequence[str] = (),
) -> Figure:
    """Lay ``cells`` (columns of named panels, None for an empty cell) under their titles, a legend below.

    The first empty cell gets the lines of ``note``.
    """
    ph, pw = panel
    line = GLYPH_HEIGHT * _FONT
    n_rows = max(len(column) for column in cells)
    width = max(2 * _MARGIN + len(cells) * pw + (len(cells) - 1) * _GAP, 2 * _MARGIN + 12 * line)
    columns, column_w, legend_h = _legend_layout(legend, width)
    top = _MARGIN + line + _GAP
    height = top + n_rows * ph + (n_rows - 1) * _GAP + legend_h + _MARGIN
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    origins: dict[str, tuple[int, int]] = {}
    notes = list(note)
    for c, (column, title) in enumerate(zip(cells, titles, strict=True)):
        left = _MARGIN + c * (pw + _GAP)
        draw_text(canvas, left, _MARGIN, title, _BLACK, _FONT, max_width=pw)
        for r, cell in enumerate(column):
            y = top + r * (ph + _GAP)
            if cell is None:
                for i, text in enumerate(notes):
                    draw_text(canvas, left, y + i * (line + _GAP // 2), text, _BLACK, _FONT, max_width=pw)
                notes = []
                continue
            name, picture = cell
            canvas[y - 1 : y + ph + 1, left - 1 : left + pw + 1] = _FRAME  # white panels stay visible
            canvas[y : y + ph, left : left + pw] = picture
            origins[name] = (y, left)
    _draw_legend(canvas, top + n_rows * ph + (n_rows - 1) * _GAP + _GAP, legend, columns, column_w)
    return Figure(canvas, origins)


def _draw_legend(
    canvas: U8, top: int, legend: Sequence[tuple[RGB, str]], columns: int, column_w: int
) -> None:
    """Swatches and names from row ``top``, in ``columns`` columns ``column_w`` wide."""
    line = GLYPH_HEIGHT * _FONT
    for n, (colour, name) in enumerate(legend):
        r, c = divmod(n, columns)
        x, y = _MARGIN + c * column_w, top + r * (line + _GAP)
        canvas[y : y + line, x : x + line] = _BLACK
        canvas[y + 1 : y + line - 1, x + 1 : x + line - 1] = colour
        draw_text(canvas, x + line + _GAP, y, name, _BLACK, _FONT, max_width=column_w - line - 2 * _GAP)


def compose_strip(grid: SequenceGrid, panels: SequencePanels) -> Figure:
    """The strip: a column per window (its class map, then the change of the pair ending in it)."""
    cells: list[list[tuple[str, U8] | None]] = []
    for k, picture in enumerate(panels.classes, 1):
        change = (f"change {k - 1}", panels.changes[k - 2]) if k >= 2 else None
        cells.append([(f"class {k}", picture), change])
    return _compose(cells, window_labels(grid.windows), panels.legend, panels.geometry.panel, _EXPLANATION)


def compose_frame(grid: SequenceGrid, panels: SequencePanels, pair: int) -> Figure:
    """The GIF frame of ``pair`` (1-based): class before, class after, change."""
    if not 1 <= pair <= grid.pairs:
        raise PublishError(f"pair {pair} does not exist; the sequence has pairs 1..{grid.pairs}")
    labels = window_labels(grid.windows)
    cells: list[list[tuple[str, U8] | None]] = [
        [(f"class {pair}", panels.classes[pair - 1])],
        [(f"class {pair + 1}", panels.classes[pair])],
        [(f"change {pair}", panels.changes[pair - 1])],
    ]
    titles = (labels[pair - 1], labels[pair], f"pair {pair}: change")
    return _compose(cells, titles, panels.legend, panels.geometry.panel)


def compose_date_map(grid: SequenceGrid, target: str | None = None, max_side: int = PANEL_SIDE) -> Figure:
    """A map of the first-change date (of all change, or of one ``target``), coloured as its COG.

    The legend names each window's start date in its ramp colour (see
    :func:`pipeline.sequence.cogs.date_colormap`), then "no change" and "nodata".

    Raises
    ------
    PublishError
        When ``target`` is not one of the cube's targets.
    """
    if target is not None and target not in grid.targets:
        raise PublishError(f"target {target!r} is not in the sequence cube; choose from {list(grid.targets)}")
    geometry = quicklook_geometry(grid.height, grid.width, max_side)
    s = geometry.stride
    if target is None:
        values = zarr.open_array(str(grid.path), path="first_change", mode="r")[::s, ::s]
    else:
        array = zarr.open_array(str(grid.path), path="first_target_change", mode="r")
        values = array[grid.targets.index(target), ::s, ::s]
    table = date_colormap(len(grid.windows))
    lut = np.zeros((len(grid.windows) + 1, 3), dtype=np.uint8)
    for value in range(len(grid.windows) + 1):
        lut[value] = table[value][:3]
    codes = np.asarray(values).astype(np.int64)
    nodata = (codes == DATE_NODATA) | (codes > len(grid.windows))
    rgb = np.where(nodata[..., None], np.uint8(0), lut[np.where(nodata, 0, codes)]).astype(np.uint8)
    rgb = np.repeat(np.repeat(rgb, geometry.scale, axis=0), geometry.scale, axis=1)
    labels = window_labels(grid.windows)
    legend = [(_rgb(lut[k]), labels[k - 1]) for k in range(2, len(grid.windows) + 1)]
    legend += [(_rgb(lut[0]), "no change"), (_BLACK, _NODATA_NAME)]
    title = "first change" if target is None else f"first change: {target}"
    return _compose([[("first change", rgb)]], [title], legend, geometry.panel)


def draw_area_chart(
    periods: Sequence[str],
    series: Mapping[str, Sequence[float]],
    colours: Mapping[str, RGB],
    title: str,
    height: int = 240,
) -> U8:
    """A grouped bar chart: one group per period, one bar per series, a legend of the series below.

    Parameters
    ----------
    periods
        Label of each group (e.g. the window each pair ends in).
    series
        Values per series, one per period (e.g. changed hectares per target).
    colours
        RGB of each series.
    title
        Drawn above the chart; the axis is labelled with 0 and the largest value.
    height
        Height of the plotting area in pixels.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` ``uint8`` picture.

    Raises
    ------
    PublishError
        When a series has not one value per period, a value is negative, or a series has no colour.
    """
    if not series or any(len(v) != len(periods) for v in series.values()) or set(series) - set(colours):
        raise PublishError(
            f"give one value per period ({len(periods)}) for each series and a colour for each: "
            f"series {[(n, len(v)) for n, v in series.items()]}, colours for {sorted(colours)}"
        )
    values = np.asarray([list(v) for v in series.values()], dtype=np.float64)
    if (values < 0).any() or not np.isfinite(values).all():
        raise PublishError("the chart's values must be finite and not negative")
    line = GLYPH_HEIGHT * _FONT
    top_value = float(values.max()) if values.max() > 0 else 1.0
    axis_text = f"{top_value:,.1f}"
    axis_w = text_size(axis_text, _FONT)[0] + _GAP
    group_w = max(text_size(label, _FONT)[0] for label in periods) + 2 * _GAP
    bar_w = max(1, (group_w - 2 * _GAP) // len(series))
    width = 2 * _MARGIN + axis_w + len(periods) * group_w
    legend = [(colours[name], name) for name in series]
    columns, column_w, legend_h = _legend_layout(legend, width)
    plot_top, left = _MARGIN + line + _GAP, _MARGIN + axis_w
    base = plot_top + height
    canvas = np.full((base + _GAP + line + legend_h + _MARGIN, width, 3), 255, dtype=np.uint8)
    draw_text(canvas, _MARGIN, _MARGIN, title, _BLACK, _FONT, max_width=width - 2 * _MARGIN)
    draw_text(canvas, _MARGIN, plot_top, axis_text, _BLACK, _FONT)
    draw_text(canvas, left - _GAP - text_size("0", _FONT)[0], base - line, "0", _BLACK, _FONT)
    canvas[plot_top, left - _GAP // 2 : width - _MARGIN] = _FRAME  # the largest value's level
    for p, label in enumerate(periods):
        x0 = left + p * group_w + _GAP
        for i, row in enumerate(values):
            bar = int(round(row[p] / top_value * height))
            canvas[base - bar : base, x0 + i * bar_w : x0 + (i + 1) * bar_w - 1] = legend[i][0]
        draw_text(
            canvas, left + p * group_w + _GAP // 2, base + _GAP, label, _BLACK, _FONT, max_width=group_w
        )
    canvas[plot_top : base + 1, left - 1] = _BLACK
    canvas[base, left - 1 : width - _MARGIN] = _BLACK
    _draw_legend(canvas, base + _GAP + line + _GAP, legend, columns, column_w)
    return canvas


def _palette_frames(frames: Sequence[U8]) -> tuple[list[NDArray[np.uint8]], list[int]]:
    """Index the frames on one exact palette of the colours they use."""
    packed = [
        (f[..., 0].astype(np.uint32) << 16) | (f[..., 1].astype(np.uint32) << 8) | f[..., 2] for f in frames
    ]
    colours = np.unique(np.concatenate([p.ravel() for p in packed]))
    if colours.size > 256:
        raise PublishError(
            f"the sequence quick-look uses {colours.size} colours, more than a GIF holds (256); the job has "
            "too many classes for the animation: publish without it"
        )
    indexed = [np.searchsorted(colours, p).astype(np.uint8) for p in packed]
    palette = [int(v) for c in colours.tolist() for v in ((c >> 16) & 255, (c >> 8) & 255, c & 255)]
    return indexed, palette


def _write_gif(frames: Sequence[U8], path: Path) -> None:
    indexed, palette = _palette_frames(frames)
    images = []
    for frame in indexed:
        image = Image.frombytes("P", (frame.shape[1], frame.shape[0]), frame.tobytes())
        image.putpalette(palette)
        images.append(image)
    with replace_atomically(path) as tmp:
        images[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=FRAME_MILLISECONDS,
            loop=0,
            optimize=False,
        )


def write_sequence_quicklooks(cube: Path, out_dir: Path) -> dict[str, Path]:
    """Write the strip PNG and the animated GIF of a sequence cube.

    Parameters
    ----------
    cube
        The sequence cube (``sequence.zarr``) of a finished sequence run.
    out_dir
        Folder of the files (created): :data:`STRIP_NAME` and :data:`ANIMATION_NAME`. An existing
        file is replaced only once its successor is written whole.

    Returns
    -------
    dict
        ``{"strip": <png>, "animation": <gif>}``.

    Raises
    ------
    PublishError
        When ``cube`` is not a finished sequence cube (see
        :func:`pipeline.sequence.cogs.read_sequence_grid`), or the pictures need more colours than
        a GIF holds.
    """
    grid = read_sequence_grid(Path(cube))
    panels = read_panels(grid)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    strip, animation = out_dir / STRIP_NAME, out_dir / ANIMATION_NAME
    frames = [compose_frame(grid, panels, k).image for k in range(1, grid.pairs + 1)]
    _write_gif(frames, animation)
    with replace_atomically(strip) as tmp:
        Image.fromarray(compose_strip(grid, panels).image).save(tmp, format="PNG")
    return {"strip": strip, "animation": animation}
