"""Errors of the large-area pipeline, all rooted in :class:`seg2change_core.errors.Seg2ChangeError`."""

from __future__ import annotations

from seg2change_core.errors import Seg2ChangeError

__all__ = [
    "CatalogError",
    "CubeError",
    "JobSpecError",
    "NothingFoundError",
    "OutputExistsError",
    "ServerError",
]


class JobSpecError(Seg2ChangeError, ValueError):
    """A job specification is invalid; the message names the field and the fix."""


class CatalogError(Seg2ChangeError):
    """A STAC catalog cannot be reached or answers something unusable."""


class NothingFoundError(CatalogError):
    """A search found no usable item for a time window."""


class CatalogUnavailableError(CatalogError):
    """A catalog (or its href signer's service) stayed unreachable or busy through the bounded retries.

    Worth trying again later, unlike a refused request or a bad job.
    """


__all__ += ["CatalogUnavailableError"]


class OutputExistsError(Seg2ChangeError):
    """The output already exists and the job was not told to overwrite it."""


class CubeError(Seg2ChangeError):
    """The input cube cannot be assembled from the items found (bands, CRS, grid)."""


class ServerError(Seg2ChangeError):
    """A local STAC server could not be started or did not become ready."""


class SceneError(Seg2ChangeError, ValueError):
    """A synthetic scene was asked for with parameters it cannot take; the message names the fix."""


__all__ += ["SceneError"]


class InferenceError(Seg2ChangeError):
    """Tiled inference failed: a block could not be computed or written (the message names it)."""


class ChangeCubeMismatchError(InferenceError):
    """An existing change cube was made by a different job; it is never overwritten silently."""


class ClusterError(Seg2ChangeError):
    """A Dask cluster cannot be started or reached, or lacks the workers the job needs."""


__all__ += ["ChangeCubeMismatchError", "ClusterError", "InferenceError"]


class QuicklookError(Seg2ChangeError, ValueError):
    """A quick-look cannot be drawn from the arrays given; the message names the fix."""


__all__ += ["QuicklookError"]


class PublishError(Seg2ChangeError):
    """Outputs (COGs, STAC, statistics, quick-look) cannot be published; the message names the fix."""


class StacValidationError(PublishError, ValueError):
    """A STAC document is invalid against its JSON schemas, or a schema it needs is not available."""


__all__ += ["PublishError", "StacValidationError"]


class StorageError(Seg2ChangeError):
    """An output location cannot be used: unknown protocol, missing bucket, no access; the message names the fix."""


__all__ += ["StorageError"]


class JobTooLargeError(JobSpecError):
    """A job exceeds its size limit (``limits.max_pixels``); the message holds the estimate."""


class ContainmentError(JobSpecError):
    """A path leaves where it must stay: an asset outside the catalog's folder, an output inside the
    inputs or inside another job's cube; the message names both and the fix."""


__all__ += ["ContainmentError", "JobTooLargeError"]


class OutputLockedError(Seg2ChangeError):
    """Another live run holds the lock of the output folder; the message names it."""


__all__ += ["OutputLockedError"]
