"""Former home of the local STAC servers, now :mod:`pipeline.local_servers`.

Kept as a re-export because the demo, the CLI, benchmarks and tests import these names from here.
"""

from pipeline.local_servers import (
    CollectionLike,
    ItemsLike,
    PgstacServer,
    RustacServer,
    StacServer,
    find_pg_bindir,
    find_pgstac_python,
    find_rustac,
    serve_collection,
)

__all__ = [
    "CollectionLike",
    "ItemsLike",
    "PgstacServer",
    "RustacServer",
    "StacServer",
    "find_pg_bindir",
    "find_pgstac_python",
    "find_rustac",
    "serve_collection",
]
