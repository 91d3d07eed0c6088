"""Local servers that code starts, fills and stops, never left running: STAC APIs and an object store.

Two STAC APIs, behind one :class:`StacServer` protocol (:mod:`.stac`):

* :class:`RustacServer` (:mod:`.rustac`): ``rustac serve``, in memory, ready in ~0.1 s; bbox,
  datetime and collection searches only. For the demo and fast tests.
* :class:`PgstacServer` (:mod:`.pgstac`, its database in :mod:`.postgres`): PostgreSQL + PostGIS +
  pgstac + stac-fastapi-pgstac, ready in a few seconds; adds ``query``, CQL2 ``filter`` and
  ``sortby``.

One S3-compatible object store, behind the :class:`S3Server` protocol: :class:`SeaweedServer`
(:mod:`.object_store`), SeaweedFS's ``weed server -s3``.

None of these projects ships a way to run its server as a managed child of a Python program (start
on a free port, wait until it answers, stop it and everything it spawned even when the caller
forgets), so that part is written here, once (:mod:`.process`). Each server process runs in its
own process group and is stopped by ``close()``, a ``with`` block, garbage collection or
interpreter exit.

Examples
--------
>>> with serve_collection("collection.json", "items.ndjson") as server:  # doctest: +SKIP
...     client = pystac_client.Client.open(server.url)
...     items = client.search(bbox=[10, 45, 11, 46]).item_collection()
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from pipeline.local_servers.object_store import S3Server, SeaweedServer, find_weed
from pipeline.local_servers.pgstac import PgstacServer, find_pgstac_python
from pipeline.local_servers.postgres import find_pg_bindir
from pipeline.local_servers.rustac import RustacServer, find_rustac
from pipeline.local_servers.stac import CollectionLike, ItemsLike, StacServer

__all__ = [
    "CollectionLike",
    "ItemsLike",
    "PgstacServer",
    "RustacServer",
    "S3Server",
    "SeaweedServer",
    "StacServer",
    "find_pg_bindir",
    "find_pgstac_python",
    "find_rustac",
    "find_weed",
    "serve_collection",
]

ServerKind = Literal["rustac", "pgstac"]


@contextmanager
def serve_collection(
    collection_path: str | os.PathLike[str],
    items_path: str | os.PathLike[str],
    kind: ServerKind = "rustac",
    **options: Any,
) -> Iterator[StacServer]:
    """Serve one collection and its items for the duration of a ``with`` block.

    Parameters
    ----------
    collection_path
        JSON file of the STAC collection.
    items_path
        NDJSON file (one item a line) or JSON FeatureCollection of its items.
    kind
        ``"rustac"`` (in memory, instant, no query/filter/sort) or ``"pgstac"`` (PostgreSQL,
        a few seconds, full search).
    **options
        Keyword arguments of :class:`RustacServer` or :class:`PgstacServer`, e.g. ``startup_timeout``.

    Yields
    ------
    StacServer
        The running server; its ``url`` is the STAC API root.

    Raises
    ------
    ValueError
        ``kind`` is not one of the two.
    ServerError
        The server could not start.
    CatalogError
        The files are not a STAC collection and its items.
    """
    server: StacServer
    if kind == "rustac":
        server = RustacServer(collection_path, items_path, **options)
    elif kind == "pgstac":
        server = PgstacServer(collection_path, items_path, **options)
    else:
        raise ValueError(f"kind must be 'rustac' or 'pgstac', not {kind!r}")
    with server:
        yield server
