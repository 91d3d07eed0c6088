"""An in-memory STAC API (``rustac serve``) for the demo and tests.

``rustac serve`` reads its collections and items from files once, at start, and has no endpoint to
add more; :meth:`RustacServer.load` therefore writes everything loaded so far to the server's
folder and restarts it (0.1-0.2 s), normally on the same port. It answers bbox, datetime, ids and
collections searches, but not ``query``, ``filter`` or ``sortby``: use
:class:`~pipeline.local_servers.pgstac.PgstacServer` for those.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Any

from pipeline.errors import ServerError
from pipeline.local_servers import process
from pipeline.local_servers.process import ManagedServer
from pipeline.local_servers.stac import (
    CollectionLike,
    ItemsLike,
    read_collection,
    read_items,
    write_json,
    write_ndjson,
)

__all__ = ["RustacServer", "find_rustac"]

logger = logging.getLogger(__name__)

_READY_PATHS = ("/", "/collections")


def find_rustac(executable: str | os.PathLike[str] | None = None) -> Path:
    """Locate the ``rustac`` command.

    Parameters
    ----------
    executable
        Explicit path; by default the ``rustac`` next to ``sys.executable`` (the active virtual
        environment), then the one on ``PATH``.

    Raises
    ------
    ServerError
        No ``rustac`` command was found.
    """
    return process.find_executable(
        "rustac", "install it with `pip install 'rustac>=0.9'` in the project's environment", executable
    )


@dataclass
class _State:
    """What the finalizer needs to clean up; it must not hold the server itself."""

    workdir: Path
    proc: Popen[bytes] | None = None
    generation: int = 0


def _shutdown(state: _State) -> None:
    try:
        if state.proc is not None:
            proc, state.proc = state.proc, None
            process.stop(proc)
            logger.info("stopped rustac STAC API (pid %d)", proc.pid)
    finally:
        shutil.rmtree(state.workdir, ignore_errors=True)


class RustacServer(ManagedServer):
    """A ``rustac serve`` STAC API on ``127.0.0.1``, in memory, started on construction.

    The server runs in its own process group and is stopped by :meth:`close`, by leaving a
    ``with`` block, when the object is garbage-collected, or at interpreter exit.

    Parameters
    ----------
    collection, items
        A first collection and its items to serve (see :meth:`load`); by default the server
        starts empty.
    host
        Address to listen on.
    port
        TCP port; by default a free one.
    executable
        The ``rustac`` command (see :func:`find_rustac`).
    startup_timeout
        Seconds to wait for the API to answer ``/`` and ``/collections``.

    Raises
    ------
    ServerError
        ``rustac`` is missing, exits at start or does not answer in time (the message quotes
        its log).
    CatalogError
        The collection or items are not valid STAC.
    ValueError
        ``items`` were given without ``collection``.

    Examples
    --------
    >>> with RustacServer(collection_dict, item_dicts) as server:  # doctest: +SKIP
    ...     client = pystac_client.Client.open(server.url)
    """

    def __init__(
        self,
        collection: CollectionLike | None = None,
        items: ItemsLike | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        executable: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self._executable = find_rustac(executable)
        self._host = host
        self._port = port if port is not None else process.free_port(host)
        self._startup_timeout = startup_timeout
        self._collections: dict[str, dict[str, Any]] = {}
        self._items: dict[tuple[str, str], dict[str, Any]] = {}
        self._state = _State(workdir=Path(tempfile.mkdtemp(prefix="seg2change-rustac-")))
        self._finalizer = weakref.finalize(self, _shutdown, self._state)
        try:
            if collection is not None:
                self._add(collection, items if items is not None else ())
            elif items is not None:
                raise ValueError("items were given without their collection")
            self._start()
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        """Root URL of the API; it changes only if a restart by :meth:`load` had to take a new port."""
        return f"http://{self._host}:{self._port}"

    @property
    def pids(self) -> tuple[int, ...]:
        """Process id of the running server, empty once closed (for diagnostics and tests)."""
        proc = self._state.proc
        return (proc.pid,) if proc is not None and proc.poll() is None else ()

    @property
    def log_path(self) -> Path:
        """The server's log (stdout and stderr); removed on close."""
        return self._state.workdir / "rustac.log"

    def load(self, collection: CollectionLike, items: ItemsLike) -> None:
        """Add or replace one collection and its items, then restart the server with all data.

        Items are keyed by collection and id, so loading an item again replaces it. The restart
        keeps the port unless another process took it meanwhile; then :attr:`url` changes.

        Parameters
        ----------
        collection
            The collection as a dict or the path of its JSON file.
        items
            Item dicts, or the path of an NDJSON file or a JSON FeatureCollection. Items without a
            ``collection`` field are given the collection's id.

        Raises
        ------
        CatalogError
            The collection or items are not valid STAC, or an item names another collection.
        ServerError
            The server is closed, or did not come back after the restart.
        """
        if self.closed:
            raise ServerError("this rustac STAC API is closed; start a new RustacServer")
        self._add(collection, items)
        self._start()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.url
        return f"RustacServer({state}, {len(self._collections)} collections, {len(self._items)} items)"

    def _add(self, collection: CollectionLike, items: ItemsLike) -> None:
        data = read_collection(collection)
        records = read_items(items, data["id"])
        self._collections[data["id"]] = data
        for item in records:
            self._items[(data["id"], item["id"])] = item

    def _write_files(self) -> list[Path]:
        state = self._state
        shutil.rmtree(state.workdir / f"data-{state.generation}", ignore_errors=True)
        state.generation += 1
        folder = state.workdir / f"data-{state.generation}"
        folder.mkdir()
        files = [
            write_json(folder / f"collection-{n}.json", collection)
            for n, collection in enumerate(self._collections.values())
        ]
        files.append(write_ndjson(folder / "items.ndjson", self._items.values()))
        return files

    def _start(self) -> None:
        state = self._state
        files = self._write_files()
        if state.proc is not None:
            process.stop(state.proc)
            state.proc = None
        for attempt in (1, 2):
            cmd = [str(self._executable), "serve", "--addr", f"{self._host}:{self._port}", *map(str, files)]
            state.proc = process.spawn(cmd, log_path=self.log_path, cwd=state.workdir)
            try:
                process.wait_ready(
                    self.url,
                    _READY_PATHS,
                    proc=state.proc,
                    log_path=self.log_path,
                    name="rustac serve",
                    timeout=self._startup_timeout,
                )
            except ServerError:
                exited = state.proc.poll() is not None
                process.stop(state.proc)
                state.proc = None
                if attempt == 2 or not (exited and process.port_in_use(self._port, self._host)):
                    raise
                old_url = self.url
                self._port = process.free_port(self._host)
                logger.warning("port of %s was taken by another process; moving to %s", old_url, self.url)
                continue
            break
        logger.info("started rustac STAC API at %s (%d items)", self.url, len(self._items))
