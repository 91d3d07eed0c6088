"""A throw-away pgstac STAC API: PostgreSQL + PostGIS + pypgstac + stac-fastapi-pgstac under uvicorn.

This is the local server that answers ``query``, CQL2 ``filter`` and ``sortby`` (``rustac serve``
does not). No library starts such a stack from Python without Docker, hence this module:

* PostgreSQL refuses to run as root, so as root ``initdb``/``pg_ctl`` run as the ``postgres`` user
  (``runuser``, else ``su``) in a temporary folder that user owns; trust authentication, listening
  on 127.0.0.1 only, its unix socket inside that folder, durability switched off (the data dies
  with the folder).
* pypgstac and stac-fastapi-pgstac live in their own virtual environment (they downgrade packages
  prefect needs), so they run as subprocesses of that environment's Python; it is found at
  ``$SEG2CHANGE_PGSTAC_PYTHON``, else ``<repo>/.venv-pgstac/bin/python``.
* pypgstac ignores ``PYPGSTAC_DSN``: the DSN is passed explicitly. The API reads ``PGUSER``,
  ``PGPASSWORD``, ``PGHOST``, ``PGPORT`` and ``PGDATABASE`` (any password works with trust).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Any

from pipeline.errors import ServerError
from pipeline.stac_servers import _process
from pipeline.stac_servers._base import (
    CollectionLike,
    ItemsLike,
    ManagedServer,
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

_POSTGRES_INSTALL_HINT = "apt-get install -y postgresql-15-postgis-3"
_REPO_ROOT = Path(__file__).resolve().parents[2]
_DB_USER = "postgres"
_DB_NAME = "postgres"
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


def _version_key(bindir: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", bindir))


def find_pg_bindir(bindir: str | os.PathLike[str] | None = None) -> Path:
    """Locate the folder holding PostgreSQL's ``initdb``, ``pg_ctl`` and ``postgres``, with PostGIS.

    Parameters
    ----------
    bindir
        Explicit folder; by default ``$SEG2CHANGE_PG_BINDIR``, the folder of ``initdb`` on ``PATH``,
        else the newest ``/usr/lib/postgresql/*/bin`` (Debian keeps them off ``PATH``).

    Raises
    ------
    ServerError
        PostgreSQL or its PostGIS extension is not installed.
    """
    if bindir is None:
        bindir = os.environ.get("SEG2CHANGE_PG_BINDIR") or None
    if bindir is not None:
        candidates = [Path(bindir)]
    else:
        on_path = shutil.which("initdb")
        candidates = [Path(on_path).parent] if on_path else []
        debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
        candidates += [Path(p) for p in debian]
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            break
    else:
        looked = ", ".join(map(str, candidates)) or "PATH and /usr/lib/postgresql/*/bin"
        raise ServerError(f"PostgreSQL not found (looked in {looked}); install it: {_POSTGRES_INSTALL_HINT}")
    if not _has_postgis(folder):
        raise ServerError(
            f"PostGIS for the PostgreSQL in {folder} not found; install it: {_POSTGRES_INSTALL_HINT}"
        )
    return folder


def _has_postgis(bindir: Path) -> bool:
    pg_config = bindir / "pg_config"
    if not pg_config.is_file():
        return True  # Cannot tell; a missing PostGIS then shows in the migration's log.
    try:
        sharedir = subprocess.run(
            [str(pg_config), "--sharedir"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return True
    return (Path(sharedir) / "extension" / "postgis.control").is_file()


def _numeric_properties(items: list[dict[str, Any]]) -> list[str]:
    """Names of the properties whose values (nulls aside) are all numbers."""
    numeric: dict[str, bool] = {}
    for item in items:
        for name, value in (item.get("properties") or {}).items():
            if value is not None:
                is_number = isinstance(value, int | float) and not isinstance(value, bool)
                numeric[name] = numeric.get(name, True) and is_number
    return sorted(name for name, ok in numeric.items() if ok)


def _postgres_user() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as: ``postgres`` when we are root, else nobody to switch to."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as exc:
        raise ServerError(
            "running as root, which PostgreSQL refuses, and there is no `postgres` user to run it as; "
            f"installing PostgreSQL creates one ({_POSTGRES_INSTALL_HINT})"
        ) from exc


def _as_user(user: pwd.struct_passwd | None, cmd: list[str]) -> list[str]:
    if user is None:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", user.pw_name, "--", *cmd]
    return ["su", user.pw_name, "-s", "/bin/sh", "-c", shlex.join(cmd)]


@dataclass
class _State:
    """What the finalizer needs to clean up; it must not hold the server itself."""

    workdir: Path
    pg_ctl: Path
    user: pwd.struct_passwd | None
    api: Popen[bytes] | None = None
    postgres_started: bool = False

    @property
    def datadir(self) -> Path:
        return self.workdir / "data"


def _postmaster_pid(datadir: Path) -> int | None:
    try:
        return int((datadir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stop_postgres(state: _State) -> None:
    pid = _postmaster_pid(state.datadir)
    if pid is None:
        return
    cmd = _as_user(
        state.user, [str(state.pg_ctl), "-D", str(state.datadir), "-m", "fast", "-w", "-t", "30", "stop"]
    )
    try:
        _process.run_checked(
            cmd, log_path=state.workdir / "pg_ctl.log", what="pg_ctl stop", timeout=40, cwd=state.workdir
        )
    except ServerError as exc:
        logger.warning("%s; killing postmaster %d", exc, pid)
        # SIGQUIT is PostgreSQL's immediate shutdown; SIGKILL if even that is ignored.
        for sig in (signal.SIGQUIT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + 5
            while _process.pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not _process.pid_alive(pid):
                return


def _shutdown(state: _State) -> None:
    was_running = state.api is not None or state.postgres_started
    try:
        if state.api is not None:
            api, state.api = state.api, None
            _process.stop(api)
    finally:
        try:
            if state.postgres_started:
                state.postgres_started = False
                _stop_postgres(state)
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
        user = _postgres_user()
        self._host = host
        self._timeout = startup_timeout
        self._pg_port = 0
        self._api_port = 0
        self._n_items = 0
        self._n_loads = 0
        workdir = Path(tempfile.mkdtemp(prefix="seg2change-pgstac-", dir=tmp_root))
        self._state = _State(workdir=workdir, pg_ctl=self._bindir / "pg_ctl", user=user)
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
            self._start_postgres()
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
        return f"postgresql://{_DB_USER}:{_DB_USER}@{self._host}:{self._pg_port}/{_DB_NAME}"

    @property
    def pids(self) -> tuple[int, ...]:
        """Process ids of the API and the PostgreSQL postmaster, empty once closed."""
        pids = []
        if self._state.api is not None and self._state.api.poll() is None:
            pids.append(self._state.api.pid)
        postmaster = _postmaster_pid(self._state.datadir) if self._state.postgres_started else None
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

    def _start_postgres(self) -> None:
        state = self._state
        run_dir = state.workdir / "run"
        run_dir.mkdir()
        if state.user is not None:
            os.chown(run_dir, state.user.pw_uid, state.user.pw_gid)
        initdb = [
            str(self._bindir / "initdb"),
            *("-D", str(state.datadir), "-U", _DB_USER, "-A", "trust", "-E", "UTF8"),
            *("--no-locale", "--no-sync", "--no-instructions"),
        ]
        try:
            _process.run_checked(
                _as_user(state.user, initdb),
                log_path=state.workdir / "initdb.log",
                what="initdb",
                timeout=self._timeout,
                cwd=state.workdir,
            )
        except ServerError as exc:
            if state.user is not None and "Permission denied" in str(exc):
                raise ServerError(
                    f"{exc}\nAs root, PostgreSQL runs as the `postgres` user, which must be able to enter "
                    f"{state.workdir.parent} and every folder above it: pass another tmp_root."
                ) from exc
            raise
        for attempt in (1, 2):
            self._pg_port = _process.free_port(self._host)
            options = [
                *("-c", f"listen_addresses={self._host}", "-p", str(self._pg_port), "-k", str(run_dir)),
                *("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"),
            ]
            pg_ctl = [
                str(state.pg_ctl),
                *("-D", str(state.datadir), "-l", str(state.workdir / "postgres.log")),
                *("-w", "-t", str(int(self._timeout)), "-o", shlex.join(options), "start"),
            ]
            state.postgres_started = True
            try:
                _process.run_checked(
                    _as_user(state.user, pg_ctl),
                    log_path=state.workdir / "pg_ctl.log",
                    what=f"pg_ctl start (server log: {state.workdir / 'postgres.log'})",
                    timeout=self._timeout + 10,
                    cwd=state.workdir,
                )
            except ServerError:
                _stop_postgres(state)
                state.postgres_started = False
                # Most likely another process took the port between choosing and binding it.
                if attempt == 2 or not _process.port_in_use(self._pg_port, self._host):
                    raise
                continue
            break
        logger.debug("PostgreSQL listens on %s:%d (data in %s)", self._host, self._pg_port, state.datadir)

    def _pg_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PGUSER=_DB_USER,
            PGPASSWORD=_DB_USER,
            PGHOST=self._host,
            PGPORT=str(self._pg_port),
            PGDATABASE=_DB_NAME,
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
            _process.run_checked(
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
            self._api_port = _process.free_port(self._host)
            cmd = [
                str(self._python),
                *("-m", "uvicorn", "--factory", "stac_fastapi.pgstac.app:create_app"),
                *("--host", self._host, "--port", str(self._api_port), "--no-access-log"),
            ]
            # The working folder is the temporary one, so no stray .env file configures the API.
            state.api = _process.spawn(cmd, log_path=log_path, env=self._pg_env(), cwd=state.workdir)
            try:
                _process.wait_ready(
                    self.url,
                    _READY_PATHS,
                    proc=state.api,
                    log_path=log_path,
                    name="stac-fastapi-pgstac (uvicorn)",
                    timeout=self._timeout,
                )
            except ServerError:
                exited = state.api.poll() is not None
                _process.stop(state.api)
                state.api = None
                if attempt == 2 or not (exited and _process.port_in_use(self._api_port, self._host)):
                    raise
                continue
            break
        conforms = _process.get_json(self.url + "/conformance").get("conformsTo", [])
        missing = [c for c in _REQUIRED_CONFORMANCE if not any(uri.endswith(c) for uri in conforms)]
        if missing:
            raise ServerError(
                f"the pgstac API at {self.url} lacks {', '.join(missing)} in /conformance; "
                "is ENABLED_EXTENSIONS set in the environment without query and filter?"
            )
