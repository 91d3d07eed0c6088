"""Where outputs live: a local folder or an fsspec URL such as ``s3://bucket/prefix``, behind one type.

A :class:`Location` is a local path or an fsspec URL; the pipeline passes Locations (or their
string form, to Dask workers) and asks them to check, read, write, upload and remove. Zarr and
xarray get :meth:`Location.zarr_store`: the local path as before, or zarr's ``FsspecStore`` for a
URL, so every Zarr chunk goes straight from the process that computes it to the object store.

Credentials and endpoints come from the standard environment of the fsspec implementation, never
from the job (the job is recorded in the outputs, and a secret must not be). For ``s3://`` that is
botocore's: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` (or ``AWS_PROFILE``), ``AWS_REGION``,
and ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for S3-compatible stores (SeaweedFS, MinIO,
Ceph), all honoured by s3fs 2026.9 / aiobotocore 3.10 as they are. Dask workers started on this
machine inherit them; workers on other machines need the same variables.

What differs between the two kinds:

* **atomic writes**: locally a temporary file beside the target, renamed over it; on an object
  store one PUT, which is atomic per object (readers see the old object or the new one);
* **renames**: none on object stores, so a Zarr store there is written in place and marks its own
  completion (see :mod:`pipeline.cube` and :mod:`pipeline.change_cube`);
* **existence**: locally the path exists; remotely an object lies at the key or under the prefix
  (object stores have no folders, and some, SeaweedFS among them, list empty "folders" that remain
  after their objects are deleted: those do not count).
"""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, TypeAlias

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipeline.errors import StorageError

__all__ = ["EMPTY_FOLDER_WARNING", "Location", "LocationLike", "relative_href", "replace_atomically"]

LocationLike: TypeAlias = "str | os.PathLike[str] | Location"
"""A local path, an fsspec URL (``s3://bucket/prefix``), or a :class:`Location`."""

#: Protocols that can be read but not written.
_READ_ONLY = frozenset({"http", "https"})
#: Options of every remote filesystem this module makes: never answer from a stale listing (other
#: processes write the same prefixes, and a removed store must not seem to exist).
_REMOTE_OPTIONS: dict[str, Any] = {"use_listings_cache": False}
#: What zarr says of an empty "folder" that an object store lists where a store was deleted (it
#: skips it): expected when a store is written again in place.
EMPTY_FOLDER_WARNING = "Object at .* is not recognized as a component of a Zarr hierarchy"


@contextlib.contextmanager
def replace_atomically(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); on success it replaces ``path`` in one rename.

    A failure removes the temporary file and leaves any earlier ``path`` as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


#: Words of the errors an object store raises when the bucket is missing.
_NO_BUCKET = ("bucket does not exist", "nosuchbucket")


def _normalise(text: str) -> str:
    text = text.strip()
    if not text:
        raise StorageError("the location is empty; give a folder path or a URL such as s3://bucket/prefix")
    text = text.removeprefix("file://")
    protocol, sep, rest = text.partition("://")
    if not sep:
        return str(Path(text))
    protocol = protocol.lower()
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise StorageError(
            f"{text}: no fsspec implementation knows the protocol {protocol!r}; "
            "use a local folder or s3://bucket/prefix (or install the fsspec package for it)"
        ) from None
    except ImportError as exc:
        raise StorageError(f"{text}: {exc} (pip install it into the project's environment)") from None
    rest = posixpath.normpath(rest.strip("/")) if rest.strip("/") else ""
    if not rest or rest == ".":
        raise StorageError(f"{text} names no bucket; write it as {protocol}://bucket/prefix")
    return f"{protocol}://{rest}"


#: Environment variables that configure the fsspec implementations (credentials, endpoints).
_ENVIRONMENT_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_")


def _filesystem(protocol: str, *, asynchronous: bool = False) -> fsspec.AbstractFileSystem:
    """The filesystem of a protocol, configured by the environment as it is now.

    Instances are cached per protocol, mode (zarr wants an asynchronous one, which it drives from
    its own event loop) and environment: a changed ``AWS_*`` variable gives a new instance, as a
    new process would see it. They are kept for the life of the process (s3fs clients collected
    while another event loop runs fail to close).
    """
    if protocol == "file":
        return LocalFileSystem()
    environment = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENVIRONMENT_PREFIXES)))
    return _cached_filesystem(protocol, asynchronous, environment, os.getpid())


@functools.cache
def _cached_filesystem(
    protocol: str, asynchronous: bool, environment: tuple[tuple[str, str], ...], pid: int
) -> fsspec.AbstractFileSystem:
    options = {**_REMOTE_OPTIONS, "skip_instance_cache": True}
    if asynchronous:
        options["asynchronous"] = True
    return fsspec.filesystem(protocol, **options)


def _access_problem(exc: BaseException, location: Location, doing: str) -> StorageError | None:
    """A clear error for the ways an object store refuses a request, or None for other errors."""
    name = type(exc).__name__
    text = str(exc)
    if isinstance(exc, FileNotFoundError) and any(w in text.lower() for w in _NO_BUCKET):
        return StorageError(
            f"cannot {doing} {location}: the bucket {location.bucket!r} does not exist; create it "
            f"(e.g. `aws s3 mb {location.protocol}://{location.bucket}`) or correct the output"
        )
    if isinstance(exc, PermissionError):
        return StorageError(
            f"cannot {doing} {location}: access denied ({text}); check AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and AWS_ENDPOINT_URL for a store other than AWS"
        )
    if name in {"NoCredentialsError", "PartialCredentialsError"}:
        return StorageError(
            f"cannot {doing} {location}: no credentials found ({text}); set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment of this process and of the Dask workers"
        )
    if name in {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"}:
        return StorageError(
            f"cannot {doing} {location}: the object store does not answer ({text}); check "
            "AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) and that the server runs"
        )
    return None


@dataclass(frozen=True)
class Location:
    """A local path or an fsspec URL, where the pipeline reads and writes.

    Build it from a string, a path or another Location; ``Location("s3://b/p/")`` and
    ``Location("s3://b/p")`` are equal, and ``file://`` URLs are local paths. Its string form is what
    it was built from (normalised): a path, or ``protocol://bucket/key``.

    Parameters
    ----------
    url
        A local path or ``protocol://bucket/prefix`` URL.

    Raises
    ------
    StorageError
        The protocol has no fsspec implementation installed, or the URL names no bucket.

    Examples
    --------
    >>> out = Location("s3://my-bucket/jobs/berlin")
    >>> str(out / "change_cube.zarr")
    's3://my-bucket/jobs/berlin/change_cube.zarr'
    """

    url: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", _normalise(os.fspath(self.url)))

    @classmethod
    def parse(cls, value: LocationLike) -> Location:
        """Return ``value`` as a Location (itself when it is one)."""
        return value if isinstance(value, Location) else cls(os.fspath(value))

    # ------------------------------------------------------------------ names

    def __str__(self) -> str:
        return self.url

    def __fspath__(self) -> str:
        """The local path, so local Locations open like paths; a URL is not a path (TypeError)."""
        if not self.is_local:
            raise TypeError(
                f"{self.url} is not on the local file system; pass str(location) to fsspec-aware code"
            )
        return self.url

    @property
    def protocol(self) -> str:
        """``file`` for a local path, else the URL's scheme (``s3``...)."""
        protocol, sep, _ = self.url.partition("://")
        return protocol if sep else "file"

    @property
    def is_local(self) -> bool:
        """Whether this is a path on the local file system."""
        return self.protocol == "file"

    @property
    def key(self) -> str:
        """The path without the protocol: a local path, or ``bucket/key``."""
        return self.url.partition("://")[2] if not self.is_local else self.url

    @property
    def bucket(self) -> str:
        """The bucket of a URL (its first path component); empty for a local path."""
        return "" if self.is_local else self.key.split("/", 1)[0]

    @property
    def local_path(self) -> Path:
        """The local path.

        Raises
        ------
        StorageError
            For a URL.
        """
        if not self.is_local:
            raise StorageError(f"{self.url} is not on the local file system; this step needs a local path")
        return Path(self.url)

    @property
    def name(self) -> str:
        """The last component."""
        return posixpath.basename(self.key) if not self.is_local else Path(self.url).name

    @property
    def parent(self) -> Location:
        """The containing folder (prefix); a bucket is its own parent."""
        if self.is_local:
            return Location(str(Path(self.url).parent))
        parent = posixpath.dirname(self.key)
        return Location(f"{self.protocol}://{parent}") if parent else self

    def join(self, *names: str) -> Location:
        """The location of ``names`` (relative parts, ``/``-separated) inside this one."""
        parts = [n.strip("/") for n in names if n.strip("/")]
        if self.is_local:
            return Location(str(Path(self.url, *parts)))
        return Location(posixpath.join(self.url, *parts))

    def __truediv__(self, name: str) -> Location:
        return self.join(name)

    # ------------------------------------------------------------------ access

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem (credentials and endpoint from the environment, no listing cache)."""
        return _filesystem(self.protocol)

    @contextlib.contextmanager
    def _explained(self, doing: str) -> Iterator[None]:
        try:
            yield
        except StorageError:
            raise
        except Exception as exc:
            problem = _access_problem(exc, self, doing)
            if problem is None:
                raise
            raise problem from exc

    def check_access(self) -> None:
        """Check that the location's bucket exists and can be listed with the credentials at hand.

        Local paths are not checked (their folders are made when written).

        Raises
        ------
        StorageError
            The bucket is missing, access is denied, there are no credentials, or the endpoint
            does not answer; the message says what to set.
        """
        if self.is_local:
            return
        with self._explained("reach"):
            try:
                self.fs.ls(self.bucket, detail=False)
            except FileNotFoundError:
                raise StorageError(
                    f"cannot write {self}: the bucket {self.bucket!r} does not exist; create it "
                    f"(e.g. `aws s3 mb {self.protocol}://{self.bucket}`) or correct the output"
                ) from None

    def exists(self) -> bool:
        """Whether a file lies here, or (a folder, a prefix) anything lies under it."""
        if self.is_local:
            return Path(self.url).exists()
        with self._explained("check"):
            return _has_objects(self.fs, self.key)

    def is_file(self) -> bool:
        """Whether a file (an object) lies exactly here."""
        if self.is_local:
            return Path(self.url).is_file()
        with self._explained("check"):
            return bool(self.fs.isfile(self.key))

    def size(self) -> int:
        """Size of the file in bytes."""
        if self.is_local:
            return Path(self.url).stat().st_size
        with self._explained("read"):
            return int(self.fs.size(self.key))

    @contextlib.contextmanager
    def open_read(self) -> Iterator[IO[bytes]]:
        """Open the file for reading bytes."""
        with self._explained("read"), self.fs.open(self.key, "rb") as f:
            yield f

    def read_bytes(self) -> bytes:
        """The file's bytes."""
        if self.is_local:
            return Path(self.url).read_bytes()
        with self._explained("read"):
            return bytes(self.fs.cat_file(self.key))

    def read_text(self) -> str:
        """The file's text (UTF-8)."""
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """Write the file atomically: readers see the earlier file or the new one, never a part.

        Locally the bytes go to a temporary file beside it that is renamed over it (folders are
        made); on an object store they are one PUT.
        """
        if self.is_local:
            with replace_atomically(Path(self.url)) as tmp:
                tmp.write_bytes(data)
            return
        with self._explained("write"):
            self.fs.pipe_file(self.key, data)

    def write_text(self, text: str) -> None:
        """Write text (UTF-8) atomically; see :meth:`write_bytes`."""
        self.write_bytes(text.encode())

    def upload(self, source: Path) -> None:
        """Copy a local file here, atomically (see :meth:`write_bytes`); large files are streamed."""
        if self.is_local:
            with replace_atomically(Path(self.url)) as tmp:
                shutil.copyfile(source, tmp)
            return
        with self._explained("upload to"):
            self.fs.put_file(str(source), self.key)

    def remove(self) -> None:
        """Delete what lies here: a file, or a folder (prefix) with everything in it. Missing is fine."""
        if self.is_local:
            path = Path(self.url)
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            return
        with self._explained("remove"), contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.key, recursive=True)

    def zarr_store(self, *, read_only: bool = False) -> Any:
        """What zarr and xarray open: the local path, or a zarr ``FsspecStore`` on the URL."""
        if self.is_local:
            return self.url
        from zarr.storage import FsspecStore

        with self._explained("open"):
            fs = _filesystem(self.protocol, asynchronous=True)
            if not fs.async_impl:
                return FsspecStore.from_url(
                    self.url, storage_options=dict(_REMOTE_OPTIONS), read_only=read_only
                )
            return FsspecStore(fs, path=self.key, read_only=read_only)

    @property
    def zarr_create_mode(self) -> Literal["w-", "w"]:
        """zarr's mode to create a store here, once :meth:`exists` found nothing.

        ``w-`` (refuse anything there) on a local disk. An object store may still list an empty
        "folder" where a store was deleted (SeaweedFS does), which zarr's ``w-`` takes for data:
        there ``w`` (clear the prefix, then create), which deletes no object that :meth:`exists`
        did not see.
        """
        return "w-" if self.is_local else "w"

    def resolve_href(self, href: str) -> Location:
        """The location an href names, taken relative to this folder unless it is absolute."""
        if "://" in href or href.startswith("/"):
            return Location(href)
        if self.is_local:
            return Location(os.path.normpath(Path(self.url, href)))
        return Location(f"{self.protocol}://{posixpath.normpath(posixpath.join(self.key, href))}")


def _has_objects(fs: fsspec.AbstractFileSystem, key: str) -> bool:
    """Whether an object lies at ``key`` or under it.

    Empty "folders" do not count: some stores (SeaweedFS) list a folder whose objects were deleted,
    as a common prefix or as a zero-byte ``key/`` marker object.
    """
    try:
        entries = fs.ls(key, detail=True)
    except FileNotFoundError:
        return False
    if any(entry.get("type") != "directory" and not entry["name"].endswith("/") for entry in entries):
        return True
    return any(
        _has_objects(fs, entry["name"].rstrip("/"))
        for entry in entries
        if entry.get("type") == "directory" and entry["name"].rstrip("/") != key.rstrip("/")
    )


def relative_href(target: LocationLike, start: LocationLike) -> str:
    """The href of ``target`` from the folder ``start``: relative (``./a``, ``../a``) when both lie
    on one file system or in one bucket, so the outputs can be moved or copied as a whole; else
    ``target``'s absolute URL."""
    target, start = Location.parse(target), Location.parse(start)
    if target.is_local and start.is_local:
        rel = os.path.relpath(Path(target.url).resolve(), Path(start.url).resolve())
    elif target.protocol == start.protocol and target.bucket == start.bucket:
        rel = posixpath.relpath(target.key, start.key)
    else:
        return target.url
    return rel if rel.startswith("..") else f"./{rel}"
