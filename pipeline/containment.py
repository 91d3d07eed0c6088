"""Where a job may read and write: asset files inside the catalog's folder, outputs apart from inputs.

Two rules, checked before any pixel is read or written:

- **Assets**: an asset href that names a local file (a plain path, ``file://``, or a path made
  absolute from a relative href such as ``../../../../etc/shadow``) must lie, once symbolic links
  are resolved, inside the folder of a local catalog file or inside one of the job's
  ``asset_roots``. A STAC API's items may name local files only inside ``asset_roots``: a server
  must not make the pipeline read this machine's files. Remote hrefs (``https://``, ``s3://``,
  GDAL's ``/vsicurl/`` and other network prefixes) are not local and are not confined here.
- **Outputs**: the output folder is neither empty, nor a file, nor inside the job's inputs (the
  catalog's folder, an asset root) nor inside another job's cube (any ``*.zarr`` store on its way),
  and a local output's nearest existing folder is writable; once the items are known, an
  object-store output is not inside the folder of any of their remote assets either.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from pipeline.errors import ContainmentError
from pipeline.spec import JobSpec
from pipeline.storage import Location

__all__ = ["check_asset_hrefs", "check_output", "input_roots", "local_asset_path"]

#: GDAL virtual file system prefixes that read over the network (not local files).
_REMOTE_VSI = ("/vsicurl", "/vsis3", "/vsigs", "/vsiaz", "/vsiadls", "/vsioss", "/vsiswift", "/vsiwebhdfs")
#: URL schemes that name remote objects.
_REMOTE_SCHEMES = frozenset({"http", "https", "s3", "gs", "gcs", "az", "abfs", "abfss", "azure", "oss"})


def input_roots(job: JobSpec) -> tuple[Path, ...]:
    """The local folders the job's inputs may come from: a local catalog's folder and ``asset_roots``."""
    roots = [Path(root).expanduser().resolve() for root in job.asset_roots]
    if not job.catalog.is_api:
        roots.insert(0, Path(job.catalog.url).parent.resolve())
    return tuple(roots)


def local_asset_path(href: str) -> Path | None:
    """The local file an asset href names, or None when it is remote.

    Raises
    ------
    ContainmentError
        A GDAL ``/vsi`` prefix other than a network one (``/vsizip/``, ``/vsimem/``...), whose
        inner path cannot be vouched for.
    """
    if href.startswith("/vsi"):
        if href.startswith(_REMOTE_VSI):
            return None
        raise ContainmentError(
            f"asset href {href!r} uses a GDAL virtual file system that reads local files in ways that "
            "cannot be confined; give the file's plain path or an https:// / s3:// URL"
        )
    parsed = urlparse(href)
    if parsed.scheme in _REMOTE_SCHEMES:
        return None
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise ContainmentError(
            f"asset href {href!r} has the scheme {parsed.scheme!r}, which is neither a local file nor a "
            "known remote store; use a path, file://, https:// or s3://"
        )
    return Path(href)


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def check_asset_hrefs(job: JobSpec, items: Mapping[str, Iterable[Mapping[str, Any]]]) -> None:
    """Refuse any item asset whose local file lies outside the catalog's folder and ``asset_roots``,
    and an object-store output inside the folder of a remote asset (found only once items are known).

    Parameters
    ----------
    job
        The job (its catalog and ``asset_roots``).
    items
        STAC item dictionaries per epoch, as :class:`pipeline.discover.Discovery` holds them.

    Raises
    ------
    ContainmentError
        Naming the item, the asset, the file and the folders allowed.
    """
    roots = input_roots(job)
    output = Location(job.output)
    for epoch_items in items.values():
        for item in epoch_items:
            for key, asset in item.get("assets", {}).items():
                href = str(asset.get("href", ""))
                path = local_asset_path(href)
                where = f"asset {key!r} of item {item.get('id')!r}"
                if path is None:
                    _check_apart(output, href.rsplit("/", 1)[0], where)
                    continue
                if not path.is_absolute():
                    raise ContainmentError(
                        f"{where} has the relative href {href!r}, which a STAC API cannot anchor to a "
                        "folder; serve absolute hrefs, or read the items from a local catalog file"
                    )
                resolved = path.resolve()
                if not _inside(resolved, roots):
                    allowed = ", ".join(str(r) for r in roots) or "none (the catalog is a STAC API)"
                    raise ContainmentError(
                        f"{where} names the local file {resolved}, outside the folders a job may read "
                        f"assets from ({allowed}); if the file is meant to be read, add its folder to "
                        "the job's asset_roots, otherwise the catalog is not to be trusted"
                    )


def _check_apart(output: Location, folder: str, where: str) -> None:
    """Refuse an object-store output inside the folder (prefix) of a remote asset."""
    if output.is_local or "://" not in folder:
        return
    if f"{output}/".startswith(f"{folder.rstrip('/')}/"):
        raise ContainmentError(
            f"output {output} lies inside {folder}, the folder of the {where} (the job's inputs); "
            "outputs must never mix with the scenes: give a prefix outside it"
        )


def _store_named_on(path: PurePosixPath | Path) -> str | None:
    for part in (path, *path.parents):
        if part.name.endswith(".zarr"):
            return str(part)
    return None


def _store_on(path: Path) -> str | None:
    """The Zarr store ``path`` is (or lies in): a ``*.zarr`` folder or one holding Zarr metadata."""
    for part in (path, *path.parents):
        if part.name.endswith(".zarr") or (part / "zarr.json").is_file() or (part / ".zgroup").is_file():
            return str(part)
    return None


def check_output(job: JobSpec) -> None:
    """Refuse an output that is empty, a file, unwritable, inside the inputs or inside a Zarr cube.

    Raises
    ------
    ContainmentError
        Naming the output, what it lies in or what is wrong with it, and the fix.
    """
    if not job.output.strip():
        raise ContainmentError("output is empty; give a folder path or an s3:// URI")
    output = Location(job.output)
    if not output.is_local:
        store = _store_named_on(PurePosixPath(output.key))
        if store is not None:
            raise ContainmentError(
                f"output {output} lies inside the Zarr store {output.protocol}://{store} (another job's cube); "
                "give the job a folder of its own"
            )
        return
    path = output.local_path.expanduser().resolve()
    store = _store_on(path)
    if store is not None:
        raise ContainmentError(
            f"output {path} lies inside the Zarr store {store} (another job's cube); writing there "
            "would corrupt it: give the job a folder of its own"
        )
    for root in input_roots(job):
        if _inside(path, [root]):
            raise ContainmentError(
                f"output {path} lies inside the job's inputs ({root}: the catalog's folder or an asset "
                "root); outputs must never mix with the scenes: give a folder outside it"
            )
    if path.exists() and not path.is_dir():
        raise ContainmentError(f"output {path} is a file, not a folder; give a folder path for the outputs")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ContainmentError(
            f"output {path} cannot be made: {existing} is a file; give a folder path for the outputs"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ContainmentError(
            f"output {path} cannot be written: no write permission on {existing}; choose a folder you "
            "can write, or change its permissions"
        )
