"""Where a job's scenes are listed: a STAC API, a local catalog file, or a folder of images.

:class:`CatalogSpec` is the ``catalog`` field of :class:`~pipeline.spec.JobSpec` (re-exported by
:mod:`pipeline.spec`).
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from pipeline.signers import check_signer_name

__all__ = ["CatalogSpec"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class CatalogSpec(BaseModel):
    """Where the scenes are listed: a STAC API URL, a local ItemCollection / static catalog file, or
    a folder or glob pattern of the user's own GeoTIFF/COG files.

    Local files may be a STAC ItemCollection (``FeatureCollection``), newline-delimited items
    (``.ndjson``), or a static Catalog/Collection JSON whose item links are followed. A folder
    (searched for ``*.tif`` at any depth) or a glob is catalogued when the job is discovered
    (:mod:`pipeline.own_imagery`: collection ``own-imagery``, each file dated by ``name_date`` or its
    DATETIME tag). A bare string is the ``url``.

    Attributes
    ----------
    url
        The API root URL or the catalog file.
    sign
        Optional href signer applied to every asset href found, after the search: a preset
        (``planetary_computer``) or an import path ``package.module:function`` of a function that
        takes an href and returns the href to read (see :mod:`pipeline.signers`).
    name_date
        For a folder or glob: the ``strptime`` pattern of the date in the file names (``%Y%m%d``).
    retries, backoff, timeout
        Each API request is retried at most ``retries`` times on connection errors and on HTTP
        429/502/503/504, with exponential backoff from ``backoff`` seconds; ``timeout`` bounds the
        wait for one answer (see :mod:`pipeline.catalog_io`).
    """

    model_config = _FROZEN

    url: str
    sign: str | None = None
    name_date: str | None = None
    retries: int = Field(default=5, ge=0, le=20)
    backoff: float = Field(default=0.5, ge=0, le=60)
    timeout: float = Field(default=60.0, gt=0)

    @field_validator("sign")
    @classmethod
    def _known_signer(cls, value: str | None) -> str | None:
        return None if value is None else check_signer_name(value)

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Jobs that leave the access fields alone dump as before: their recorded identity is unchanged.
        doc = handler(self)
        if isinstance(doc, dict):
            for name in ("sign", "name_date", "retries", "backoff", "timeout"):
                if getattr(self, name) == type(self).model_fields[name].default:
                    doc.pop(name, None)
        return doc

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str | Path):
            return {"url": str(value)}
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if value.startswith(("http://", "https://")):
            return value
        path = Path(value.removeprefix("file://")).expanduser()
        if path.is_dir():
            return str(path.resolve())
        if glob.has_magic(str(path)) and Path(str(path).split("*")[0]).parent.is_dir():
            return str(path.absolute())
        if not path.is_file():
            raise ValueError(
                f"catalog {value!r} is neither an http(s) STAC API URL nor an existing local file or folder "
                "of GeoTIFFs; give the API root URL, the path of an ItemCollection/catalog JSON, or the "
                "images' folder"
            )
        return str(path.resolve())

    @property
    def is_images(self) -> bool:
        """True when the catalog is a folder or glob of image files, catalogued at discovery."""
        return not self.is_api and (Path(self.url).is_dir() or glob.has_magic(self.url))

    @property
    def is_api(self) -> bool:
        """True when the catalog is a STAC API reached over HTTP."""
        return self.url.startswith(("http://", "https://"))
