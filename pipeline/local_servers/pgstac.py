"""A throw-away pgstac STAC API: PostgreSQL + PostGIS + pypgstac + stac-fastapi-pgstac under uvicorn.

This is the local server that answers ``query``, CQL2 ``filter`` and ``sortby`` (``rustac serve``
does not). No library starts such a stack from Python without Docker, hence this module:

* PostgreSQL runs in a temporary folder (:class:`~pipeline.local_servers.postgres.TempPostgres`),
  listening on 127.0.0.1 only.
* pypgstac and stac-fastapi-pgstac live in their own virtual environment (they downgrade packages
  prefect needs), so they run as subprocesses of that environment's Python; it is found at
  ``$SEG2CHANGE_PGSTAC_PYTHON``, else ``<repo>/.venv-pgstac/bin/python``.
* pypgstac ignores ``PYPGSTAC_DSN``: the DSN is passed explicitly. The API reads ``PGUSER``,
  ``PGPASSWORD``, ``PGHOST``, ``PGPORT`` and ``PGDATABASE`` (any password works with trust).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Any

from pipeline.errors import ServerError
from pipeline.local_servers import process
from pipeline.local_servers.postgres import (
    DB_NAME,
    DB_USER,
    TempPostgres,
    find_pg_bindir,
    postgres_user,
)
from pipeline.local_servers.process import ManagedServer
from pipeline.local_servers.stac import (
    CollectionLike,
    ItemsLike,
    read_collection,
    read_items,
    write_json,
    write_ndjson,
)

__all__ = ["PGSTAC_INSTALL_HINT", "PgstacServer", "find_pg_bindir", "find_pgstac_python"]

logger = logging.getLogger(__name__)

PGSTAC_INSTALL_HINT = (
    "python3 -m venv .venv-pgstac && .venv-pgstac/bin/pip install "
    "'pypgstac[psycopg]==0.10.0' 'stac-fastapi-pgstac==7.2.0' uvicorn"
)
"""Shell command, run at the repository root, that creates the pgstac environment."""

_REPO_ROOT = Path(__file__).resolve().parents[2]
_READY_PATHS = ("/", "/collections")
_REQUIRED_CONFORMANCE = ("item-search#query", "item-search#filter")

_Load = tuple[dict[str, Any], list[dict[str, Any]]]
"""A collection and its items, ready to write for pypgstac."""

# Runs in the pgstac environment; its one argument is the JSON of :meth:`PgstacServer._pgstac_tool`'s
# `job`. Without a queryable, pgstac compares and sorts a property as text ("5" > "10"), so the
# numeric properties of loaded items become "number" queryables of their collection.
_PGSTAC_TOOL = """\
import json
import sys

from pypgstac.db import PgstacDB
from pypgstac.load import Loader, Methods
from pypgstac.migrate import Migrate

job = json.loads(sys.argv[1])
with PgstacDB(dsn=job["dsn"]) as db:
    if job["migrate"]:
        print("pgstac schema version", Migrate(db).run_migration(), flush=True)
    if job.get("collection_file"):
        loader = Loader(db=db)
        loader.load_collections(job["collection_file"], Methods.upsert)
        if job.get("items_file"):
            loader.load_items(job["items_file"], Methods.upsert)
        conn = db.connect()
        known = {
            row[0]
            for row in conn.execute(
                "SELECT name FROM queryables WHERE collection_ids IS NULL OR %s = ANY(collection_ids)",
                [job["collection_id"]],
            )
        }
        new = {name: {"type": "number"} for name in job["numeric"] if name not in known}
        if new:
            conn.execute(
                "SELECT upsert_queryables(%s::jsonb, %s::text[])",
                [json.dumps({"properties": new}), [job["collection_id"]]],
            )
        print("loaded", job["collection_id"], "new number queryables:", sorted(new), flush=True)
"""


def find_pgstac_python(python: str | os.PathLike[str] | None = None) -> Path:
    """Locate the Python of the virtual environment holding pypgstac and stac-fastapi-pgstac.

    Parameters
    ----------
    python
        Explicit path; by default ``$SEG2CHANGE_PGSTAC_PYTHON``, else ``<repo>/.venv-pgstac/bin/python``.

    Raises
    ------
    ServerError
        That Python does not exist; the message says how to create the environment.
    """
    if python is not None:
        path = Path(python)
    elif os.environ.get("SEG2CHANGE_PGSTAC_PYTHON"):
        path = Path(os.environ["SEG2CHANGE_PGSTAC_PYTHON"])
    else:
        path = _REPO_ROOT / ".venv-pgstac" / "bin" / "python"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ServerError(
            f"no pgstac Python at {path}: set SEG2CHANGE_PGSTAC_PYTHON, run `bash .ci/setup`, or at the "
            f"repository root run: {PGSTAC_INSTALL_HINT}"
        )
    return path


def _numeric_properties(items: list[dict[str, Any]]) -> list[str]:
    """Names of the properties whose values (nulls aside) are all numbers."""
    numeric: dict[str, bool] = {}
    for item in items:
        for name, value in (item.get("properties") or {}).items():
            if value is not None:
                is_number = isinstance(value, int | float) and not isinstance(value, bool)
                numeric[name] = numeric.get(name, True) and is_number
    return sorted(name for name, ok in numeric.items() if ok)


@dataclass
class _State:
    """What the finalizer needs to clean up; it must not hold the server itself."""

    postgres: TempPostgres
    api: Popen[bytes] | None = None

    @property
    def workdir(self) -> Path:
        return self.postgres.workdir


def _shutdown(state: _State) -> None:
    was_running = state.api is not None or state.postgres.started
    try:
        if state.api is not None:
            api, state.api = state.api, None
            process.stop(api)
    finally:
        try:
            state.postgres.stop()
        finally:
            shutil.rmtree(state.workdir, ignore_errors=True)
    if was_running:
        logger.info("stopped pgstac STAC API")


class PgstacServer(ManagedServer):
    """A pgstac STAC API on ``127.0.0.1`` backed by a temporary PostgreSQL, started on construction.

    Start-up (initdb, PostgreSQL, pgstac schema, API) takes a few seconds. Every process is stopped
    and the temporary folder removed by :meth:`close`, by leaving a ``with`` block, when the object
    is garbage-collected, or at interpreter exit. The API supports the query, filter (CQL2) and
    sort extensions; start-up fails if ``/conformance`` does not list query and filter.

    Parameters
    ----------
    collection, items
        A first collection and its items to load (see :meth:`load`); by default the catalog
        starts empty.
    python
        Python of the pgstac environment (see :func:`find_pgstac_python`).
    pg_bindir
        Folder of PostgreSQL's programs (see :func:`find_pg_bindir`).
    host
        Address both PostgreSQL and the API listen on.
    startup_timeout
        Seconds allowed for each start-up step.
    tmp_root
        Parent of the temporary folder (default: the system's); as root it must be readable by
        the ``postgres`` user.

    Raises
    ------
    ServerError
        A program is missing, or a start-up step fails (the message quotes its log).
    CatalogError
        The collection or items are not valid STAC.
    ValueError
        ``items`` were given without ``collection``.

    Examples
    --------
    >>> with PgstacServer("collection.json", "items.ndjson") as server:  # doctest: +SKIP
    ...     client = pystac_client.Client.open(server.url)
    ...     clear = client.search(query={"eo:cloud_cover": {"lt": 20}})
    """

    def __init__(
        self,
        collection: CollectionLike | None = None,
        items: ItemsLike | None = None,
        *,
        python: str | os.PathLike[str] | None = None,
        pg_bindir: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        startup_timeout: float = 60.0,
        tmp_root: str | os.PathLike[str] | None = None,
    ) -> None:
        started = time.monotonic()
        self._python = find_pgstac_python(python)
        self._bindir = find_pg_bindir(pg_bindir)
        user = postgres_user()
        self._host = host
        self._timeout = startup_timeout
        self._api_port = 0
        self._n_items = 0
        self._n_loads = 0
        workdir = Path(tempfile.mkdtemp(prefix="seg2change-pgstac-", dir=tmp_root))
        self._state = _State(TempPostgres(workdir=workdir, bindir=self._bindir, user=user))
        self._finalizer = weakref.finalize(self, _shutdown, self._state)
        try:
            if user is not None:
                os.chown(workdir, user.pw_uid, user.pw_gid)
            first: _Load | None = None
            if collection is not None:
                data = read_collection(collection)
                first = (data, read_items(items if items is not None else (), data["id"]))
            elif items is not None:
                raise ValueError("items were given without their collection")
            self._state.postgres.start(host, startup_timeout)
            self._pgstac_tool(migrate=True, load=first)
            self._start_api()
        except BaseException:
            self.close()
            raise
        logger.info(
            "started pgstac STAC API at %s (%d items) in %.1f s",
            self.url,
            self._n_items,
            time.monotonic() - started,
        )

    @property
    def url(self) -> str:
        """Root URL of the STAC API."""
        return f"http://{self._host}:{self._api_port}"

    @property
    def dsn(self) -> str:
        """Connection string of the PostgreSQL database holding the pgstac schema."""
        return f"postgresql://{DB_USER}:{DB_USER}@{self._host}:{self._state.postgres.port}/{DB_NAME}"

    @property
    def pids(self) -> tuple[int, ...]:
        """Process ids of the API and the PostgreSQL postmaster, empty once closed."""
        pids = []
        if self._state.api is not None and self._state.api.poll() is None:
            pids.append(self._state.api.pid)
        postmaster = self._state.postgres.pid
        if postmaster is not None:
            pids.append(postmaster)
        return tuple(pids)

    @property
    def workdir(self) -> Path:
        """The temporary folder (database, logs, loaded files); removed on close."""
        return self._state.workdir

    def load(self, collection: CollectionLike, items: ItemsLike) -> None:
        """Upsert one collection and its items with pypgstac; the API serves them at once.

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
            The server is closed, or pypgstac failed (the message quotes its log).
        """
        if self.closed:
            raise ServerError("this pgstac STAC API is closed; start a new PgstacServer")
        data = read_collection(collection)
        self._pgstac_tool(migrate=False, load=(data, read_items(items, data["id"])))

    def __repr__(self) -> str:
        return f"PgstacServer({'closed' if self.closed else self.url}, {self._n_items} items)"

    def _pg_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PGUSER=DB_USER,
            PGPASSWORD=DB_USER,
            PGHOST=self._host,
            PGPORT=str(self._state.postgres.port),
            PGDATABASE=DB_NAME,
        )
        return env

    def _pgstac_tool(self, *, migrate: bool, load: _Load | None) -> None:
        state = self._state
        job: dict[str, Any] = {"dsn": self.dsn, "migrate": migrate}
        if load is not None:
            collection, items = load
            self._n_loads += 1
            folder = state.workdir / f"load-{self._n_loads}"
            folder.mkdir()
            job["collection_id"] = collection["id"]
            job["numeric"] = _numeric_properties(items)
            job["collection_file"] = str(write_json(folder / "collection.json", collection))
            if items:
                job["items_file"] = str(write_ndjson(folder / "items.ndjson", items))
        what = " and ".join(
            step
            for step, wanted in (("pypgstac migrate", migrate), ("pypgstac load", load is not None))
            if wanted
        )
        log_path = state.workdir / "pypgstac.log"
        try:
            process.run_checked(
                [str(self._python), "-c", _PGSTAC_TOOL, json.dumps(job)],
                log_path=log_path,
                what=what,
                timeout=self._timeout,
                env=self._pg_env(),
                cwd=state.workdir,
            )
        except ServerError as exc:
            if "No module named" in str(exc):
                raise ServerError(
                    f"{exc}\n{self._python} lacks pypgstac; at the repository root run: {PGSTAC_INSTALL_HINT}"
                ) from exc
            raise
        if load is not None:
            self._n_items += len(load[1])
            logger.info("loaded collection %r (%d items) into pgstac", load[0]["id"], len(load[1]))

    def _start_api(self) -> None:
        state = self._state
        log_path = state.workdir / "api.log"
        for attempt in (1, 2):
            self._api_port = process.free_port(self._host)
            cmd = [
                str(self._python),
                *("-m", "uvicorn", "--factory", "stac_fastapi.pgstac.app:create_app"),
                *("--host", self._host, "--port", str(self._api_port), "--no-access-log"),
            ]
            # The working folder is the temporary one, so no stray .env file configures the API.
            state.api = process.spawn(cmd, log_path=log_path, env=self._pg_env(), cwd=state.workdir)
            try:
                process.wait_ready(
                    self.url,
                    _READY_PATHS,
                    proc=state.api,
                    log_path=log_path,
                    name="stac-fastapi-pgstac (uvicorn)",
                    timeout=self._timeout,
                )
            except ServerError:
                exited = state.api.poll() is not None
                process.stop(state.api)
                state.api = None
                if attempt == 2 or not (exited and process.port_in_use(self._api_port, self._host)):
                    raise
                continue
            break
        conforms = process.get_json(self.url + "/conformance").get("conformsTo", [])
        missing = [c for c in _REQUIRED_CONFORMANCE if not any(uri.endswith(c) for uri in conforms)]
        if missing:
            raise ServerError(
                f"the pgstac API at {self.url} lacks {', '.join(missing)} in /conformance; "
                "is ENABLED_EXTENSIONS set in the environment without query and filter?"
            )
