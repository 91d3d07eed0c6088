"""The sequence cube: the pairs' change and class transitions stacked along ``pair``, each window's
classes along ``time``, and the date layers (first change, last change, number of changes).

Layout (Zarr v3, one group, consolidated metadata; spatial chunks of the pairs' ``block_size``)
-------------------------------------------------------------------------------------------------
===========================  ======================  =======  ==============================================
array                        dims                    nodata   meaning
===========================  ======================  =======  ==============================================
``change_probability``       (pair, y, x)            NaN      the pair's change probability
``change``                   (pair, y, x)            255      the pair's binary change (1 changed, 0 not)
``target_change``            (pair, target, y, x)    255      the pair's per-target change
``transition``               (pair, y, x)            65535    the pair's class transition: ``before * K + after``
                                                              where changed (``K`` classes), 65534 where not;
                                                              its ``transition_codes`` attribute names each code
``class``                    (time, y, x)            255      each window's class (pair 1's class before for
                                                              window 1, pair ``k - 1``'s class after for window k)
``first_change``             (y, x)                  65535    window (1-based) after the first pair that changed;
                                                              0 no change seen
``last_change``              (y, x)                  65535    window after the last pair that changed; 0 none
``n_changes``                (y, x)                  65535    number of pairs that changed
``first_target_change``      (target, y, x)          65535    per target, as ``first_change``
``x``, ``y``, ``target``     coordinates             --       copied from pair 1's change cube
``spatial_ref``              --                      --       CRS (CF grid mapping), copied likewise
===========================  ======================  =======  ==============================================

The ``transition`` codes are those of the pairs' change cubes (:mod:`pipeline.change_cube`); its
attributes ``classes``, ``no_change_value`` and ``transition_codes`` (code -> ``"water -> building"``,
see :func:`pipeline.publish.legend.transition_label`) decode them.

Pixel values of the date layers are window numbers; the windows' dates are the root attribute
``windows`` (``START/END`` in UTC, window ``k`` at index ``k - 1``), copied onto each date layer.
A date layer is nodata where no pair had data.

Root attributes: ``format`` (:data:`FORMAT`), ``windows``, ``pairs_done`` (pairs stacked so far),
``base`` (the base job, JSON), ``classes`` (JSON). For each pair, its slices are written, then
the date layers are recomputed from the stacked ``change`` (one pair at a time per block, so
memory does not grow with the number of pairs), and only then does ``pairs_done`` count it; a run
killed before that redoes the pair's slices and date layers, which gives the same bytes (a test
holds it). The date layers are derived, so they are rewritten whole at each pair; the pair slices
already stacked are never rewritten.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from pipeline.change_cube import TRANSITION_NO_CHANGE, TRANSITION_NODATA
from pipeline.errors import OutputExistsError
from pipeline.publish.legend import transition_names

__all__ = [
    "DATE_LAYERS",
    "DATE_NODATA",
    "FORMAT",
    "PAIR_LAYERS",
    "SEQUENCE_CUBE",
    "add_pair",
    "changed_pixels",
    "open_sequence_cube",
    "pairs_done",
    "update_date_layers",
]

#: Name of the sequence cube in a sequence's output folder.
SEQUENCE_CUBE = "sequence.zarr"
#: Value of the ``format`` root attribute.
FORMAT = "seg2change-sequence-cube/2"
#: Earlier formats, refused with a message that names the fix (``/1`` had no ``transition``).
_OLD_FORMATS = ("seg2change-sequence-cube/1",)
#: Nodata of the date layers.
DATE_NODATA = 65535
DATE_LAYERS = ("first_change", "last_change", "n_changes")
#: The arrays with one slice per pair, copied from the pair's change cube layer of the same name.
PAIR_LAYERS = ("change_probability", "change", "target_change", "transition")
_U8_NODATA = 255


def _a(group: zarr.Group, name: str) -> zarr.Array[Any]:
    """The array ``name`` of a group (a cube whose member is a group is not one of ours)."""
    array = group[name]
    if not isinstance(array, zarr.Array):
        raise OutputExistsError(
            f"{group.store} has a group {name!r} where an array belongs; it is no cube of ours"
        )
    return array


def _attr(group: zarr.Group, key: str) -> Any:
    """A root attribute (JSON)."""
    return group.attrs[key]


def _open(path: Path) -> zarr.Group | None:
    if not path.exists():
        return None
    # Not the consolidated metadata: it is stale while a pair is being stacked.
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    if group.attrs.get("format") in _OLD_FORMATS:
        raise OutputExistsError(
            f"{path} is a sequence cube of an earlier seg2change ({group.attrs.get('format')}, without "
            "class transitions); nothing was changed: replace it (--overwrite) or give another output folder"
        )
    if group.attrs.get("format") != FORMAT:
        raise OutputExistsError(
            f"{path} is not a seg2change sequence cube (format {group.attrs.get('format')!r}); nothing was "
            "changed: give the sequence another output folder"
        )
    return group


def open_sequence_cube(path: Path) -> zarr.Group:
    """Open a sequence cube read-only (raises :class:`OutputExistsError` if ``path`` is not one)."""
    if _open(Path(path)) is None:
        raise OutputExistsError(f"{path} holds no sequence cube; run the sequence first")
    return zarr.open_group(str(path), mode="r")


def pairs_done(path: Path, windows: list[str], base: dict[str, Any]) -> int:
    """Pairs already stacked in the cube at ``path`` for these windows and base job (0 if none).

    Raises
    ------
    OutputExistsError
        The cube was made for another base job or other windows than a prefix of ``windows``
        (appending only adds windows at the end); nothing is changed.
    """
    group = _open(Path(path))
    if group is None:
        return 0
    done_windows = list(_attr(group, "windows"))
    if json.loads(str(_attr(group, "base"))) != json.loads(json.dumps(base, default=str)):
        raise OutputExistsError(
            f"the sequence cube {path} was made from another base job; nothing was changed: give the "
            "sequence a new output folder to run it with other job fields, or replace it (--overwrite)"
        )
    if windows[: len(done_windows)] != done_windows:
        raise OutputExistsError(
            f"the sequence cube {path} holds windows {done_windows}, which do not start the requested "
            f"windows {windows}; windows can only be appended at the end: give a new output folder, or replace "
            "it (--overwrite)"
        )
    return int(_attr(group, "pairs_done"))


def _create(path: Path, pair: zarr.Group, windows: list[str], base: dict[str, Any]) -> zarr.Group:
    """Create the cube from pair 1's change cube (grid, targets, classes, block size)."""
    change = _a(pair, "change")
    rows, cols = change.shape
    block = int(_attr(pair, "block_size"))
    targets = _a(pair, "target_change").shape[0]
    # Made aside and renamed into place, so that a run killed while creating leaves no half cube.
    staging = path.parent / f".{path.name}.creating"
    shutil.rmtree(staging, ignore_errors=True)
    group = zarr.open_group(str(staging), mode="w", zarr_format=3)
    spatial = {"grid_mapping": "spatial_ref", "coordinates": "spatial_ref"}

    def make(name: str, dims: tuple[str, ...], shape: tuple[int, ...], dtype: str, fill: Any) -> None:
        chunks = (*(1 for _ in shape[:-2]), block, block)
        array = group.create_array(
            name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, dimension_names=dims
        )
        array.attrs.update({**spatial, "nodata": None if dtype == "float32" else int(fill)})

    make("change_probability", ("pair", "y", "x"), (0, rows, cols), "float32", np.float32("nan"))
    make("change", ("pair", "y", "x"), (0, rows, cols), "uint8", _U8_NODATA)
    make("target_change", ("pair", "target", "y", "x"), (0, targets, rows, cols), "uint8", _U8_NODATA)
    make("transition", ("pair", "y", "x"), (0, rows, cols), "uint16", TRANSITION_NODATA)
    make("class", ("time", "y", "x"), (0, rows, cols), "uint8", _U8_NODATA)
    for name in DATE_LAYERS:
        make(name, ("y", "x"), (rows, cols), "uint16", DATE_NODATA)
    make("first_target_change", ("target", "y", "x"), (targets, rows, cols), "uint16", DATE_NODATA)
    for name in ("x", "y", "target"):
        source = _a(pair, name)
        array = group.create_array(
            name,
            shape=source.shape,
            dtype=source.dtype,
            dimension_names=(name,),
            fill_value=source.fill_value,
        )
        array[:] = np.asarray(source[:])
        array.attrs.update(dict(source.attrs))
    classes = json.loads(str(_attr(pair, "classes")))
    _a(group, "transition").attrs.update(
        {
            "long_name": "the pair's class transition: class_before * K + class_after where changed",
            "classes": classes,
            "no_change_value": TRANSITION_NO_CHANGE,
            "transition_codes": {str(code): name for code, name in enumerate(transition_names(classes))},
        }
    )
    ref = group.create_array("spatial_ref", shape=(), dtype="int64", fill_value=0)
    ref.attrs.update(dict(_a(pair, "spatial_ref").attrs))
    group.attrs.update(
        {
            "format": FORMAT,
            "windows": windows,
            "pairs_done": 0,
            "base": json.dumps(base, sort_keys=True, default=str),
            "classes": _attr(pair, "classes"),
            "block_size": block,
        }
    )
    os.replace(staging, path)
    return zarr.open_group(str(path), mode="r+", use_consolidated=False)


def _blocks(shape: tuple[int, ...], block: int) -> Iterator[tuple[slice, slice]]:
    for row in range(0, shape[-2], block):
        for col in range(0, shape[-1], block):
            yield slice(row, min(row + block, shape[-2])), slice(col, min(col + block, shape[-1]))


def add_pair(path: Path, k: int, pair_cube: Path, windows: list[str], base: dict[str, Any]) -> None:
    """Stack pair ``k``'s change cube into the sequence cube (created by pair 1), block by block.

    Pair ``k``'s slices are written; the arrays grow along ``pair``/``time`` when ``k`` is new,
    nothing earlier is rewritten. Then the date layers are recomputed
    (:func:`update_date_layers`), and only then does ``pairs_done`` become ``k``.
    """
    pair = zarr.open_group(str(pair_cube), mode="r")
    group = _open(Path(path))
    if group is None:
        if k != 1:
            raise OutputExistsError(f"the sequence cube {path} is missing but pair {k} is asked to extend it")
        group = _create(Path(path), pair, windows, base)
    pair_shape = _a(pair, "change").shape
    if _a(group, "change").shape[1:] != pair_shape:
        raise OutputExistsError(
            f"pair {k}'s change cube {pair_cube} has shape {pair_shape}, the sequence cube "
            f"{_a(group, 'change').shape[1:]}: every pair must use the same grid"
        )
    block = int(_attr(group, "block_size"))
    for name in PAIR_LAYERS:
        array = _a(group, name)
        if array.shape[0] < k:
            array.resize((k, *array.shape[1:]))
    if _a(group, "class").shape[0] < k + 1:
        _a(group, "class").resize((k + 1, *_a(group, "class").shape[1:]))
    out = {name: _a(group, name) for name in (*PAIR_LAYERS, "class")}
    src = {name: _a(pair, name) for name in (*PAIR_LAYERS, "class_before", "class_after")}
    for rows, cols in _blocks(pair_shape, block):
        for name in ("change_probability", "change", "transition"):
            out[name][k - 1, rows, cols] = np.asarray(src[name][rows, cols])
        out["target_change"][k - 1, :, rows, cols] = np.asarray(src["target_change"][:, rows, cols])
        if k == 1:
            out["class"][0, rows, cols] = np.asarray(src["class_before"][rows, cols])
        out["class"][k, rows, cols] = np.asarray(src["class_after"][rows, cols])
    update_date_layers(group, k, windows[: k + 1])
    group.attrs.update({"windows": windows[: k + 1], "pairs_done": k})
    zarr.consolidate_metadata(str(path))


def _fold(stack: Iterator[NDArray[np.uint8]], shape: tuple[int, ...]) -> tuple[NDArray[np.uint16], ...]:
    """First, last and number of changes over a stack of binary change slices (window numbers)."""
    first = np.full(shape, DATE_NODATA, dtype=np.uint16)
    last = first.copy()
    count = first.copy()
    for k, change in enumerate(stack, 1):
        valid = change != _U8_NODATA
        for layer in (first, last, count):
            layer[valid & (layer == DATE_NODATA)] = 0
        hit = change == 1
        first[hit & (first == 0)] = k + 1
        last[hit] = k + 1
        count[hit] += 1
    return first, last, count


def update_date_layers(group: zarr.Group, pairs: int, windows: list[str]) -> None:
    """Recompute the date layers from the first ``pairs`` stacked ``change`` and ``target_change``
    slices, block by block, labelling them with ``windows``.

    Each block reads one pair at a time, so memory follows the block size, not the number of pairs.
    """
    block = int(_attr(group, "block_size"))
    change, targets = _a(group, "change"), _a(group, "target_change")
    dates = {name: _a(group, name) for name in (*DATE_LAYERS, "first_target_change")}
    for rows, cols in _blocks(change.shape, block):
        shape = (rows.stop - rows.start, cols.stop - cols.start)
        first, last, count = _fold((np.asarray(change[k, rows, cols]) for k in range(pairs)), shape)
        for name, values in zip(DATE_LAYERS, (first, last, count), strict=True):
            dates[name][rows, cols] = values
        for t in range(targets.shape[1]):
            tfirst, _, _ = _fold((np.asarray(targets[k, t, rows, cols]) for k in range(pairs)), shape)
            dates["first_target_change"][t, rows, cols] = tfirst
    for name in (*DATE_LAYERS, "first_target_change"):
        dates[name].attrs.update({"windows": windows, "units": "window number (1-based); see windows"})


def changed_pixels(path: Path) -> list[int]:
    """Number of changed pixels (``change == 1``) of each stacked pair, in pair order, read block by block.

    Raises
    ------
    OutputExistsError
        When ``path`` holds no sequence cube.
    """
    group = open_sequence_cube(Path(path))
    change = _a(group, "change")
    done = int(_attr(group, "pairs_done"))
    counts = [0] * done
    for rows, cols in _blocks(change.shape, int(change.chunks[-1])):
        block = np.asarray(change[:done, rows, cols])
        for k in range(done):
            counts[k] += int(np.count_nonzero(block[k] == 1))
    return counts
