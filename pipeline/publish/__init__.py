"""Publishing a finished change cube: COGs, STAC, summary statistics and a quick-look PNG.

:func:`publish` does all of it; the modules hold the parts:

- :mod:`pipeline.publish.cogs`: COGs of the main layers, read back from the Zarr block by block;
- :mod:`pipeline.publish.statistics`: changed area per target class and transition, per zone;
- :mod:`pipeline.publish.quicklooks`: the quick-look PNG;
- :mod:`pipeline.publish.stac`: the STAC Collection and Item (:mod:`pipeline.publish.stac_validation`:
  their validation);
- :mod:`pipeline.publish.zones`: the zones of per-zone statistics.
"""

from pipeline.publish.cogs import (
    COG_LAYERS,
    ChangeCubeInfo,
    CogLayer,
    describe_change_cube,
    write_cog,
    write_cogs,
)
from pipeline.publish.quicklooks import write_quicklook
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
    "ChangeCubeInfo",
    "ChangeStatistics",
    "CogLayer",
    "PublishResult",
    "StacValidation",
    "StatisticsRow",
    "ZoneTotals",
    "compute_statistics",
    "describe_change_cube",
    "load_zones",
    "publish",
    "statistics_table",
    "validate_published",
    "validate_stac",
    "write_cog",
    "write_cogs",
    "write_quicklook",
    "write_statistics",
]
