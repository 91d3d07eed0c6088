"""The output layout: where each artifact of a job lies in its output folder.

One job writes everything under one output location (a local folder or an fsspec URL)::

    <output>/
        input_cube.zarr            the bi-temporal input cube (pipeline.cube)
        provenance.json            the STAC items the input cube was made from
        change_cube.zarr           the change cube (pipeline.change_cube)
        cogs/<layer>.tif           COGs of the change cube's main layers (pipeline.publish.cogs)
        stac/collection.json       STAC Collection and Item of the outputs (pipeline.publish.stac)
        stac/item.json
        statistics.parquet         changed area per class, transition and zone
        statistics.json
        quicklook.png              before / after / change quick-look
        features.parquet           per-feature impact of a response run (pipeline.publish.features)
        features.geojson
        features_summary.json
        .seg2change.lock           the lock of the run writing the folder (pipeline.output_lock)

:class:`OutputLayout` names each of them; the module constants are their names relative to the
output, for code that lays out another folder the same way (a staging folder that is uploaded).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.output_lock import LOCK_NAME
from pipeline.storage import Location, LocationLike

__all__ = [
    "CHANGE_CUBE",
    "COGS",
    "FEATURES_GEOJSON",
    "FEATURES_PARQUET",
    "FEATURES_SUMMARY",
    "INPUT_CUBE",
    "PROVENANCE",
    "QUICKLOOK",
    "STAC",
    "STAC_COLLECTION",
    "STAC_ITEM",
    "STATISTICS_JSON",
    "STATISTICS_PARQUET",
    "OutputLayout",
    "cog_name",
]

INPUT_CUBE = "input_cube.zarr"
PROVENANCE = "provenance.json"
CHANGE_CUBE = "change_cube.zarr"
COGS = "cogs"
STAC = "stac"
#: Inside :data:`STAC`.
STAC_COLLECTION = "collection.json"
#: Inside :data:`STAC`.
STAC_ITEM = "item.json"
STATISTICS_PARQUET = "statistics.parquet"
STATISTICS_JSON = "statistics.json"
QUICKLOOK = "quicklook.png"
FEATURES_PARQUET = "features.parquet"
FEATURES_GEOJSON = "features.geojson"
FEATURES_SUMMARY = "features_summary.json"


def cog_name(layer: str) -> str:
    """The file name of the COG of the change cube layer ``layer``, inside :data:`COGS`."""
    return f"{layer}.tif"


@dataclass(frozen=True)
class OutputLayout:
    """The paths of one job's outputs.

    Attributes
    ----------
    root
        The job's output folder (``job.output``): a local path or an fsspec URL.

    Examples
    --------
    >>> layout = OutputLayout.of("s3://bucket/jobs/berlin")
    >>> str(layout.stac_item)
    's3://bucket/jobs/berlin/stac/item.json'
    >>> str(layout.cog("change"))
    's3://bucket/jobs/berlin/cogs/change.tif'
    """

    root: Location

    @classmethod
    def of(cls, output: LocationLike) -> OutputLayout:
        """Return the layout of the output folder ``output`` (a path, URL or Location)."""
        return cls(Location.parse(output))

    @property
    def input_cube(self) -> Location:
        """The input cube (Zarr)."""
        return self.root / INPUT_CUBE

    @property
    def provenance(self) -> Location:
        """The provenance record of the input cube (JSON)."""
        return self.root / PROVENANCE

    @property
    def change_cube(self) -> Location:
        """The change cube (Zarr)."""
        return self.root / CHANGE_CUBE

    @property
    def cogs(self) -> Location:
        """The folder of the COGs."""
        return self.root / COGS

    def cog(self, layer: str) -> Location:
        """The COG of the change cube layer ``layer``."""
        return self.cogs / cog_name(layer)

    @property
    def stac(self) -> Location:
        """The folder of the STAC Collection and Item."""
        return self.root / STAC

    @property
    def stac_collection(self) -> Location:
        """The STAC Collection (JSON)."""
        return self.stac / STAC_COLLECTION

    @property
    def stac_item(self) -> Location:
        """The STAC Item (JSON); publishing writes it last."""
        return self.stac / STAC_ITEM

    @property
    def statistics_parquet(self) -> Location:
        """The statistics table (Parquet)."""
        return self.root / STATISTICS_PARQUET

    @property
    def statistics_json(self) -> Location:
        """The statistics (JSON)."""
        return self.root / STATISTICS_JSON

    @property
    def quicklook(self) -> Location:
        """The quick-look image (PNG)."""
        return self.root / QUICKLOOK

    @property
    def features_parquet(self) -> Location:
        """The per-feature impact table (Parquet)."""
        return self.root / FEATURES_PARQUET

    @property
    def features_geojson(self) -> Location:
        """The per-feature impact (GeoJSON)."""
        return self.root / FEATURES_GEOJSON

    @property
    def features_summary(self) -> Location:
        """The summary of the per-feature impact (JSON)."""
        return self.root / FEATURES_SUMMARY

    @property
    def lock(self) -> Location:
        """The lock of the run writing the folder (:mod:`pipeline.output_lock`)."""
        return self.root / LOCK_NAME

    def published_files(self) -> dict[str, Location]:
        """The files publishing writes besides the COGs, by name (the STAC Item is written last)."""
        return {
            "stac_item": self.stac_item,
            "stac_collection": self.stac_collection,
            "statistics_json": self.statistics_json,
            "statistics_parquet": self.statistics_parquet,
            "quicklook": self.quicklook,
        }
