"""The Onera Satellite Change Detection dataset (OSCD, Sentinel-2 L1C) in its native layout.

Layout
------
::

    root/
      <city>/
        imgs_1/<anything>_B01.tif ... _B12.tif, _B8A.tif   date 1, one GeoTIFF per band (uint16 DN)
        imgs_2/...                                         date 2
        cm/<city>-cm.tif     change map, 1 = no change, 2 = change (not georeferenced), or
        cm/cm.png            the same as 0/255 (used only when the .tif is absent)
        dates.txt            optional: "date_1: YYYYMMDD" and "date_2: YYYYMMDD"

:func:`scan_oscd` takes the root (a folder of cities) or one city folder. Pair keys are
``<dataset>/<city>`` (the dataset is the root folder's name, for a city folder its parent's, e.g.
``oscd_s2/bercy``) and each city is its own source image.

Bands and grid
--------------
The 13 bands are named with the STAC ``eo`` common names the rest of seg2change uses
(``pipeline.bands.COMMON_NAMES``), in spectral order (:data:`OSCD_BANDS`)::

    coastal  B01 60 m     nir      B08 10 m
    blue     B02 10 m     nir08    B8A 20 m
    green    B03 10 m     nir09    B09 60 m
    red      B04 10 m     cirrus   B10 60 m
    rededge071 B05 20 m   swir16   B11 20 m
    rededge075 B06 20 m   swir22   B12 20 m
    rededge078 B07 20 m

A band may also be asked for by its Sentinel-2 id (``B8A``, ``b02``; not ``b2``, which elsewhere
means "second channel") or the aliases ``rededge1`` .. ``rededge3``, ``swir1``, ``swir2``
(:func:`resolve_s2_band`). The 10 m band B02 defines the grid;
20 m and 60 m bands, stored at their own smaller grids, are resampled onto it with
:func:`rasterio.warp.reproject` (bilinear by default) from their georeferencing, so a 60 m pixel
lands where it lies on the ground even when its grid does not divide the 10 m one. Values stay
``uint16`` digital numbers (reflectance x 10000).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from seg2change_core.datasets.images import _image_shape
from seg2change_core.datasets.labels import LabelEncoding, detect_files_encoding
from seg2change_core.datasets.pairs import ChangePair
from seg2change_core.errors import DatasetError

__all__ = [
    "OSCDCity",
    "OSCD_BANDS",
    "S2_BAND_IDS",
    "S2_RESOLUTION",
    "is_oscd_city",
    "is_oscd_root",
    "read_s2_bands",
    "resolve_s2_band",
    "scan_oscd",
]

#: Sentinel-2 band id of each common name, in spectral order.
S2_BAND_IDS: dict[str, str] = {
    "coastal": "B01",
    "blue": "B02",
    "green": "B03",
    "red": "B04",
    "rededge071": "B05",
    "rededge075": "B06",
    "rededge078": "B07",
    "nir": "B08",
    "nir08": "B8A",
    "nir09": "B09",
    "cirrus": "B10",
    "swir16": "B11",
    "swir22": "B12",
}
#: The bands of an OSCD pair, in channel order (common names).
OSCD_BANDS: tuple[str, ...] = tuple(S2_BAND_IDS)
#: Native pixel size in metres of each band.
S2_RESOLUTION: dict[str, int] = {
    "coastal": 60,
    "blue": 10,
    "green": 10,
    "red": 10,
    "rededge071": 20,
    "rededge075": 20,
    "rededge078": 20,
    "nir": 10,
    "nir08": 20,
    "nir09": 60,
    "cirrus": 60,
    "swir16": 20,
    "swir22": 20,
}
_GRID_BANDS = ("blue", "green", "red", "nir")
_ALIASES: dict[str, str] = {
    **{name: name for name in S2_BAND_IDS},
    **{band_id.lower(): name for name, band_id in S2_BAND_IDS.items()},
    "rededge1": "rededge071",
    "rededge2": "rededge075",
    "rededge3": "rededge078",
    "swir1": "swir16",
    "swir2": "swir22",
}


def resolve_s2_band(name: str) -> str:
    """The common name of a Sentinel-2 band given by common name, id (``B8A``, ``B02``) or alias.

    Raises
    ------
    DatasetError
        For a name that is not a Sentinel-2 band, listing the names.
    """
    found = _ALIASES.get(name.strip().lower())
    if found is None:
        raise DatasetError(
            f"{name!r} is not a Sentinel-2 band; use one of {', '.join(OSCD_BANDS)} "
            f"(or the ids {', '.join(S2_BAND_IDS.values())})"
        )
    return found


def is_oscd_city(path: Path) -> bool:
    """Whether a folder is one OSCD city (has ``imgs_1/`` and ``imgs_2/``)."""
    return (path / "imgs_1").is_dir() and (path / "imgs_2").is_dir()


def is_oscd_root(path: Path) -> bool:
    """Whether a folder holds OSCD city folders."""
    return path.is_dir() and any(child.is_dir() and is_oscd_city(child) for child in path.iterdir())


def _band_file(folder: Path, name: str) -> Path:
    band_id = S2_BAND_IDS[name].lower()
    matches = [
        p
        for p in sorted(folder.iterdir())
        if p.suffix.lower() in (".tif", ".tiff")
        and (p.stem.lower().endswith(f"_{band_id}") or p.stem.lower() == band_id)
    ]
    if len(matches) != 1:
        what = "no file" if not matches else f"{len(matches)} files ({', '.join(m.name for m in matches)})"
        raise DatasetError(
            f"{folder} has {what} for band {S2_BAND_IDS[name]} ({name}); an OSCD date folder holds one "
            f"GeoTIFF per band named *_{S2_BAND_IDS[name]}.tif"
        )
    return matches[0]


def read_s2_bands(
    folder: Path, bands: Sequence[str] = OSCD_BANDS, *, resampling: str = "bilinear"
) -> NDArray[np.uint16]:
    """Read Sentinel-2 bands stored one file per band onto the 10 m grid of B02.

    Parameters
    ----------
    folder
        Folder with ``*_B01.tif`` .. ``*_B12.tif``, ``*_B8A.tif``.
    bands
        Common names (or ids/aliases) of the bands to read, in the order wanted.
    resampling
        Name of a :class:`rasterio.enums.Resampling` method for the 20 m and 60 m bands.

    Returns
    -------
    numpy.ndarray
        ``(len(bands), H, W)`` ``uint16`` digital numbers on the 10 m grid.

    Raises
    ------
    DatasetError
        For a missing or unreadable band file, or a 10 m band of another size than B02.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
    from rasterio.warp import reproject

    try:
        method = Resampling[resampling]
    except KeyError:
        raise DatasetError(
            f"unknown resampling {resampling!r}; use e.g. bilinear, cubic or nearest"
        ) from None
    names = [resolve_s2_band(b) for b in bands]
    grid_name = next((g for g in _GRID_BANDS if g in names), "blue")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            grid_path = _band_file(folder, grid_name)
            with rasterio.open(grid_path) as grid:
                height, width = grid.height, grid.width
                transform, crs = grid.transform, grid.crs
            out = np.zeros((len(names), height, width), dtype=np.uint16)
            for index, name in enumerate(names):
                path = _band_file(folder, name)
                with rasterio.open(path) as src:
                    if (src.height, src.width) == (height, width):
                        if S2_RESOLUTION[name] == 10 or src.transform == transform:
                            out[index] = src.read(1)
                            continue
                    elif S2_RESOLUTION[name] == 10:
                        raise DatasetError(
                            f"{path} is {src.height}x{src.width} but {grid_path} is {height}x{width}; "
                            "the 10 m bands of a date must share one grid"
                        )
                    if src.crs is not None and crs is not None:
                        reproject(
                            source=rasterio.band(src, 1),
                            destination=out[index],
                            dst_transform=transform,
                            dst_crs=crs,
                            resampling=method,
                        )
                    else:  # not georeferenced: assume the band covers the same extent
                        out[index] = src.read(1, out_shape=(height, width), resampling=method)
    except RasterioIOError as exc:
        raise DatasetError(f"cannot read a band in {folder}: {exc}; check the OSCD files") from exc
    return out


def _label_file(city: Path) -> Path:
    cm = city / "cm"
    for candidate in (cm / f"{city.name}-cm.tif", *sorted(cm.glob("*-cm.tif")), cm / "cm.png"):
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"{city} has no change map: expected cm/{city.name}-cm.tif (1 = no change, 2 = change) or "
        "cm/cm.png; OSCD test cities without labels cannot be scored or trained on"
    )


@dataclass(frozen=True)
class OSCDCity:
    """One OSCD city as a pair source (read by :meth:`load`).

    Attributes
    ----------
    city
        City name (the folder name).
    dataset
        Dataset name in the key.
    folder
        The city folder.
    label
        The change map file.
    bands
        Common names of the bands read, in channel order (default all 13).
    label_encoding
        How the change map encodes change (detected by :func:`scan_oscd`).
    resampling
        Resampling of the 20 m and 60 m bands (see :func:`read_s2_bands`).
    """

    city: str
    dataset: str
    folder: Path
    label: Path
    bands: tuple[str, ...] = OSCD_BANDS
    label_encoding: LabelEncoding | None = None
    resampling: str = "bilinear"

    @property
    def key(self) -> str:
        """``dataset/city``."""
        return f"{self.dataset}/{self.city}"

    @property
    def source_key(self) -> str:
        """``dataset/city``: each city is one source image."""
        return f"{self.dataset}/{self.city}"

    @property
    def band_names(self) -> tuple[str, ...]:
        """Common names of the channels :meth:`load` returns."""
        return self.bands

    def with_bands(self, names: Sequence[str]) -> OSCDCity:
        """The same city reading other bands (common names, ids or aliases), in that order.

        Raises
        ------
        DatasetError
            For a name that is not a Sentinel-2 band, or none at all.
        """
        resolved = tuple(resolve_s2_band(n) for n in names)
        if not resolved:
            raise DatasetError("select at least one band")
        return replace(self, bands=resolved)

    @property
    def dates(self) -> tuple[str, str] | None:
        """``(date 1, date 2)`` as ``YYYYMMDD`` from ``dates.txt``, when present."""
        path = self.folder / "dates.txt"
        if not path.is_file():
            return None
        found = dict(
            (k.strip(), v.strip())
            for k, _, v in (line.partition(":") for line in path.read_text().splitlines())
        )
        if "date_1" in found and "date_2" in found:
            return found["date_1"], found["date_2"]
        return None

    def load(self) -> ChangePair:
        """Read both dates on the 10 m grid and the change map.

        Raises
        ------
        DatasetError
            For missing or unreadable files, or a change map of another size than the 10 m grid.
        """
        from seg2change_core.datasets.images import _single_band, read_image

        before = read_s2_bands(self.folder / "imgs_1", self.bands, resampling=self.resampling)
        after = read_s2_bands(self.folder / "imgs_2", self.bands, resampling=self.resampling)
        if before.shape != after.shape:
            raise DatasetError(
                f"{self.folder}: imgs_1 is {before.shape[1]}x{before.shape[2]} but imgs_2 is "
                f"{after.shape[1]}x{after.shape[2]}; both dates must share the 10 m grid"
            )
        label = _single_band(read_image(self.label), self.label)
        if label.shape != before.shape[1:]:
            raise DatasetError(
                f"{self.label} is {label.shape[0]}x{label.shape[1]} but the 10 m grid of {self.folder} is "
                f"{before.shape[1]}x{before.shape[2]}; the change map must cover it pixel for pixel"
            )
        return ChangePair(
            self.city,
            self.dataset,
            before,
            after,
            label,
            source=self.city,
            label_encoding=self.label_encoding,
        )


def scan_oscd(
    root: str | Path,
    *,
    dataset: str | None = None,
    bands: Sequence[str] | None = None,
    label_encoding: LabelEncoding | None = None,
    ignore_value: int | None = None,
    check_sizes: bool = True,
) -> list[OSCDCity]:
    """List the cities of an OSCD root folder, or one city folder.

    Parameters
    ----------
    root
        A folder of city folders, or one city folder.
    dataset
        Dataset name in keys; default the root's name (for a city folder, its parent's).
    bands
        Bands to read, in order (common names, ids or aliases); default all 13 (:data:`OSCD_BANDS`).
    label_encoding
        Declared encoding of the change maps; ``None`` detects one per kind of change-map file
        (``<city>-cm.tif``: 1/2; ``cm.png``: 0/255) from all cities' values.
    ignore_value
        Raw label value declared as "not labelled".
    check_sizes
        Check now that each change map has the size of its city's 10 m grid.

    Returns
    -------
    list of OSCDCity
        Sorted by city.

    Raises
    ------
    DatasetError
        When the folder holds no city, a city lacks a change map or band files, or the change
        maps' encoding cannot be detected.
    """
    root = Path(root)
    if is_oscd_city(root):
        city_dirs = [root]
        name = dataset or root.resolve().parent.name
    elif is_oscd_root(root):
        city_dirs = sorted(c for c in root.iterdir() if c.is_dir() and is_oscd_city(c))
        name = dataset or root.resolve().name
    else:
        raise DatasetError(
            f"{root} is not an OSCD folder: expected <city>/imgs_1/, <city>/imgs_2/ and <city>/cm/ "
            "(or one city folder with imgs_1/, imgs_2/ and cm/)"
        )
    chosen = OSCD_BANDS if bands is None else tuple(resolve_s2_band(b) for b in bands)
    labels = {city.name: _label_file(city) for city in city_dirs}
    if check_sizes:
        for city in city_dirs:
            _, height, width = _image_shape(_band_file(city / "imgs_1", "blue"))
            _, lh, lw = _image_shape(labels[city.name])
            if (lh, lw) != (height, width):
                raise DatasetError(
                    f"{labels[city.name]} is {lh}x{lw} but the 10 m bands of {city} are {height}x{width}; "
                    "the change map must cover the 10 m grid pixel for pixel"
                )
    encodings: dict[str, LabelEncoding] = {}
    if label_encoding is None:
        kinds: dict[str, list[Path]] = {}
        for path in labels.values():
            kinds.setdefault(path.suffix.lower(), []).append(path)
        for suffix, paths in kinds.items():
            found = detect_files_encoding(
                paths, ignore_value=ignore_value, where=f"the OSCD change maps (*{suffix}) in {root}"
            )
            encodings.update({p.parent.parent.name: found for p in paths})
    else:
        encodings = {city: label_encoding.with_ignore(ignore_value) for city in labels}
    return [
        OSCDCity(city.name, name, city, labels[city.name], chosen, encodings[city.name]) for city in city_dirs
    ]
