"""Validation of STAC documents against the STAC JSON schemas, and of a published output's files.

:func:`validate_stac` validates with :mod:`jsonschema` and a :mod:`referencing` registry.
*Offline* (the default) it uses the STAC 1.1.0 core schemas (item, collection, catalog, their
common/basics/datetime/... parts) and the GeoJSON Feature/Geometry schemas that **pystac bundles**
(``pystac/validation/jsonschemas``); nothing is fetched. The *extension* schemas (projection,
file, processing) are **not** bundled by pystac nor by anything else in the environment, so offline
they are validated only when ``schema_dir`` points at a local mirror laid out like their URLs
(``<schema_dir>/stac-extensions.github.io/projection/v2.0.0/schema.json``); otherwise they are
reported in :attr:`StacValidation.skipped`, never silently passed. With ``online=True``, schemas
missing locally (extensions, other STAC versions) are downloaded from their URLs, so core *and*
extensions are validated; this is what ``seg2change validate-stac --online`` is meant to call.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema.exceptions
import referencing.exceptions
from referencing import Registry, Resource

from pipeline.errors import StacValidationError
from pipeline.publish.stac import STAC_VERSION, multihash_sha256
from pipeline.storage import Location, LocationLike

__all__ = ["StacValidation", "validate_published", "validate_stac"]

_CORE_SCHEMA = "https://schemas.stacspec.org/v{version}/{kind}-spec/json-schema/{kind}.json"
_KINDS = {"Feature": "item", "Collection": "collection", "Catalog": "catalog"}


@dataclass(frozen=True)
class StacValidation:
    """What a validation checked.

    Attributes
    ----------
    id
        The document's id.
    validated
        URIs of the schemas the document was validated against (core first).
    skipped
        Extension schema URIs that could not be validated (offline, not mirrored in ``schema_dir``).
    """

    id: str
    validated: tuple[str, ...]
    skipped: tuple[str, ...]

    @property
    def complete(self) -> bool:
        """True when every schema the document declares was validated."""
        return not self.skipped


def _bundled_schemas() -> dict[str, dict[str, Any]]:
    from pystac.validation.local_validator import get_local_schema_cache

    return get_local_schema_cache()


def _mirror_path(schema_dir: Path, uri: str) -> Path:
    return schema_dir / uri.split("://", 1)[-1].split("#", 1)[0]


class _Schemas:
    """Schema lookup: pystac's bundled core schemas, a local mirror, and (online) the web."""

    def __init__(self, *, online: bool, schema_dir: Path | None) -> None:
        self.online = online
        self.schema_dir = schema_dir
        self.cache = _bundled_schemas()

    def find(self, uri: str) -> dict[str, Any] | None:
        uri = uri.split("#", 1)[0]
        if uri in self.cache:
            return self.cache[uri]
        schema: dict[str, Any]
        if self.schema_dir is not None and _mirror_path(self.schema_dir, uri).is_file():
            schema = json.loads(_mirror_path(self.schema_dir, uri).read_text())
        elif self.online:
            import pystac

            try:
                schema = json.loads(pystac.StacIO.default().read_text(uri))
            except Exception as exc:
                raise StacValidationError(
                    f"could not download the schema {uri} ({exc}); check the network"
                ) from None
        else:
            return None
        self.cache[uri] = schema
        return schema

    def retrieve(self, uri: str) -> Resource[Any]:
        schema = self.find(uri)
        if schema is None:
            raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]
        return Resource.from_contents(schema)

    def registry(self) -> Registry[Any]:
        return Registry(retrieve=self.retrieve).with_resources(  # type: ignore[call-arg]
            [(k, Resource.from_contents(v)) for k, v in self.cache.items()]
        )


def _check(doc: Mapping[str, Any], schema: Mapping[str, Any], uri: str, schemas: _Schemas) -> None:
    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema, registry=schemas.registry(), format_checker=cls.FORMAT_CHECKER)
    try:
        errors = list(validator.iter_errors(doc))
    except referencing.exceptions.Unresolvable as exc:
        raise StacValidationError(
            f"the schema {uri} refers to {getattr(exc, 'ref', exc)}, which is not available offline; "
            "validate with online=True, or mirror it in schema_dir"
        ) from None
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        where = "/".join(str(p) for p in best.absolute_path) or "(document)"
        raise StacValidationError(
            f"{doc.get('type')} {doc.get('id')!r} is invalid against {uri} at {where}: {best.message} "
            f"({len(errors)} error(s) in all)"
        )


def validate_stac(
    document: Mapping[str, Any] | Path, *, online: bool = False, schema_dir: Path | None = None
) -> StacValidation:
    """Validate one STAC Item, Collection or Catalog against its core and extension schemas.

    Parameters
    ----------
    document
        The JSON document, or the path of its file.
    online
        Download schemas that are not available locally (extensions, other STAC versions).
    schema_dir
        A local mirror of schemas laid out like their URLs without the scheme, e.g.
        ``<schema_dir>/stac-extensions.github.io/file/v2.1.0/schema.json``.

    Returns
    -------
    StacValidation
        Which schemas were validated and which extension schemas were skipped (offline only).

    Raises
    ------
    StacValidationError
        When the document is invalid, or its core schema is not available (offline, a STAC
        version other than the bundled one).
    """
    # A JSON round trip validates exactly what is written (tuples become arrays, as in the file).
    doc = json.loads(Path(document).read_text() if isinstance(document, Path) else json.dumps(document))
    kind = _KINDS.get(str(doc.get("type")))
    if kind is None:
        raise StacValidationError(f"type {doc.get('type')!r} is not a STAC Item, Collection or Catalog")
    schemas = _Schemas(online=online, schema_dir=schema_dir)
    core_uri = _CORE_SCHEMA.format(version=doc.get("stac_version"), kind=kind)
    core = schemas.find(core_uri)
    if core is None:
        raise StacValidationError(
            f"no offline schema for STAC {doc.get('stac_version')} {kind}s (pystac bundles {STAC_VERSION}); "
            "validate with online=True"
        )
    _check(doc, core, core_uri, schemas)
    validated, skipped = [core_uri], []
    for uri in doc.get("stac_extensions") or ():
        schema = schemas.find(uri)
        if schema is None:
            skipped.append(uri)
            continue
        _check(doc, schema, uri, schemas)
        validated.append(uri)
    return StacValidation(str(doc.get("id")), tuple(validated), tuple(skipped))


def _asset_problems(item: Mapping[str, Any], item_path: Location) -> Iterable[str]:
    for key, asset in item.get("assets", {}).items():
        target = item_path.parent.resolve_href(asset["href"])
        if not target.exists():
            yield f"asset {key}: {asset['href']} does not exist"
            continue
        if "file:size" in asset and target.size() != asset["file:size"]:
            yield f"asset {key}: size {target.size()} != file:size {asset['file:size']}"
        if "file:checksum" in asset and multihash_sha256(target) != asset["file:checksum"]:
            yield f"asset {key}: the file's SHA-256 differs from file:checksum"


def validate_published(
    collection: LocationLike,
    *,
    online: bool = False,
    schema_dir: Path | None = None,
    check_files: bool = True,
) -> list[StacValidation]:
    """Validate a published Collection and its Items, and check their asset files.

    Parameters
    ----------
    collection
        ``<out>/stac/collection.json``, local or an fsspec URL (``s3://bucket/prefix/stac/collection.json``).
    online, schema_dir
        See :func:`validate_stac`.
    check_files
        Check that every asset exists and matches its ``file:size`` and ``file:checksum``.

    Returns
    -------
    list of StacValidation
        The collection's, then each item's.

    Raises
    ------
    StacValidationError
        On an invalid document, a missing item, or an asset that is missing or differs.
    """
    collection = Location.parse(collection)
    doc = json.loads(collection.read_text())
    results = [validate_stac(doc, online=online, schema_dir=schema_dir)]
    for link in doc.get("links", ()):
        if link.get("rel") != "item":
            continue
        item_path = collection.parent.resolve_href(link["href"])
        if not item_path.is_file():
            raise StacValidationError(f"{collection} links to the item {link['href']}, which does not exist")
        item = json.loads(item_path.read_text())
        results.append(validate_stac(item, online=online, schema_dir=schema_dir))
        if check_files:
            problems = list(_asset_problems(item, item_path))
            if problems:
                raise StacValidationError(f"{item_path}: " + "; ".join(problems) + "; publish again")
    return results
