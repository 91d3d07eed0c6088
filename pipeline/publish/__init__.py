"""Publishing a finished change cube: COGs, STAC, summary statistics and a quick-look PNG.

:func:`publish` runs the job's publishers; the modules hold the parts:

- :mod:`pipeline.publish.registry`: the :class:`Publisher` Protocol and the registry of publishers,
  where a new output format is added (:func:`register_publisher`);
- :mod:`pipeline.publish.publishers`: the built-in publishers (COGs, statistics, quick-look, STAC);
- :mod:`pipeline.publish.cogs`: COGs of the main layers, read back from the Zarr block by block;
- :mod:`pipeline.publish.statistics`: changed area per target class and transition, per zone
  (:mod:`pipeline.publish.zones`: the zones);
- :mod:`pipeline.publish.quicklooks`: the quick-look PNG;
- :mod:`pipeline.publish.stac`: the STAC Collection and Item, and
  :mod:`pipeline.publish.stac_validation`: their validation.
"""

from pipeline.change_cube import ChangeCubeInfo, describe_change_cube
from pipeline.publish.cogs import COG_LAYERS, CogLayer, write_cog, write_cogs
from pipeline.publish.quicklooks import write_quicklook
from pipeline.publish.registry import (
    Artifact,
    PublishContext,
    Publisher,
    available_publishers,
    get_publisher,
    register_publisher,
)
from pipeline.publish.run import PublishResult, publish
from pipeline.publish.stac_validation import StacValidation, validate_published, validate_stac
from pipeline.publish.statistics import (
    ALL_ZONE,
    ChangeStatistics,
    StatisticsRow,
    ZoneTotals,
    compute_statistics,
    statistics_table,
    write_statistics,
)
from pipeline.publish.zones import load_zones

__all__ = [
    "ALL_ZONE",
    "COG_LAYERS",
    "Artifact",
    "ChangeCubeInfo",
    "ChangeStatistics",
    "CogLayer",
    "PublishContext",
    "PublishResult",
    "Publisher",
    "StacValidation",
    "StatisticsRow",
    "ZoneTotals",
    "available_publishers",
    "compute_statistics",
    "describe_change_cube",
    "get_publisher",
    "load_zones",
    "publish",
    "register_publisher",
    "statistics_table",
    "validate_published",
    "validate_stac",
    "write_cog",
    "write_cogs",
    "write_quicklook",
    "write_statistics",
]
