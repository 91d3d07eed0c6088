"""The interface of the local STAC servers, and reading and writing the collections and items they load."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypeAlias, runtime_checkable

from pipeline.errors import CatalogError

__all__ = [
    "CollectionLike",
    "ItemsLike",
    "StacServer",
    "read_collection",
    "read_items",
    "write_json",
    "write_ndjson",
]

CollectionLike: TypeAlias = Mapping[str, Any] | str | os.PathLike[str]
"""A STAC collection as a dict, or the path of its JSON file."""

ItemsLike: TypeAlias = Iterable[Mapping[str, Any]] | str | os.PathLike[str]
"""STAC items as dicts, or the path of an NDJSON file (one item a line) or a JSON FeatureCollection."""

_NDJSON_SUFFIXES = (".ndjson", ".jsonl", ".geojsonl", ".geojsonseq")


@runtime_checkable
class StacServer(Protocol):
    """A STAC API server on this machine that code starts, fills and stops.

    Implementations start on construction and stop on :meth:`close` (also when used as a
    context manager, garbage-collected, or at interpreter exit).
    """

    @property
    def url(self) -> str:
        """Root URL of the STAC API, e.g. ``http://127.0.0.1:40123``."""
        ...

    def load(self, collection: CollectionLike, items: ItemsLike) -> None:
        """Add (or replace) one collection and its items."""
        ...

    def close(self) -> None:
        """Stop every process of the server and remove its files; calling it again does nothing."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def _read_json_file(path: Path) -> Any:
    try:
        with path.open() as f:
            return json.load(f)
    except OSError as exc:
        raise CatalogError(f"cannot read {path}: {exc}") from exc
    except ValueError as exc:
        raise CatalogError(f"{path} is not valid JSON: {exc}") from exc


def read_collection(collection: CollectionLike) -> dict[str, Any]:
    """Return a STAC collection as a new dict, read from a file if given a path.

    Raises
    ------
    CatalogError
        The file cannot be read, or it is not a STAC collection with an ``id``.
    """
    where = "collection"
    if isinstance(collection, Mapping):
        data: Any = dict(collection)
    else:
        where = os.fspath(collection)
        data = _read_json_file(Path(collection))
    if not isinstance(data, dict) or data.get("type") != "Collection" or not data.get("id"):
        raise CatalogError(f"{where} is not a STAC collection (needs type 'Collection' and an id)")
    return data


def _iter_item_records(items: ItemsLike) -> Iterable[Any]:
    if isinstance(items, str | os.PathLike):
        path = Path(items)
        if path.suffix.lower() in _NDJSON_SUFFIXES:
            try:
                with path.open() as f:
                    lines = [line for line in f if line.strip()]
            except OSError as exc:
                raise CatalogError(f"cannot read {path}: {exc}") from exc
            try:
                return [json.loads(line) for line in lines]
            except ValueError as exc:
                raise CatalogError(f"{path} is not newline-delimited JSON: {exc}") from exc
        data = _read_json_file(path)
        if isinstance(data, dict) and data.get("type") == "FeatureCollection":
            return list(data.get("features", []))
        if isinstance(data, dict):
            return [data]
        if isinstance(data, list):
            return data
        raise CatalogError(f"{path} holds neither items nor a FeatureCollection")
    return items


def read_items(items: ItemsLike, collection_id: str) -> list[dict[str, Any]]:
    """Return the items of collection ``collection_id`` as new dicts.

    Items without a ``collection`` field get ``collection_id``.

    Raises
    ------
    CatalogError
        An item is not a STAC item with an ``id``, or it names another collection.
    """
    out: list[dict[str, Any]] = []
    for n, record in enumerate(_iter_item_records(items)):
        if not isinstance(record, Mapping) or record.get("type") != "Feature" or not record.get("id"):
            raise CatalogError(f"item {n} is not a STAC item (needs type 'Feature' and an id)")
        item = dict(record)
        owner = item.setdefault("collection", collection_id)
        if owner != collection_id:
            raise CatalogError(
                f"item {item['id']!r} belongs to collection {owner!r}, not {collection_id!r}; "
                "load each collection with its own items"
            )
        out.append(item)
    return out


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as JSON to ``path`` and return the path."""
    path.write_text(json.dumps(data))
    return path


def write_ndjson(path: Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``records`` one JSON document a line to ``path`` and return the path."""
    with path.open("w") as f:
        for record in records:
            f.write(json.dumps(record, separators=(",", ":")))
            f.write("\n")
    return path
