"""A throw-away PostgreSQL with PostGIS in a temporary folder, the database of the pgstac STAC API.

PostgreSQL refuses to run as root, so as root ``initdb``/``pg_ctl`` run as the ``postgres`` user
(``runuser``, else ``su``) in a folder that user owns; trust authentication, listening on one
address only, its unix socket inside that folder, durability switched off (the data dies with the
folder).
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ServerError
from pipeline.local_servers import process

__all__ = ["DB_NAME", "DB_USER", "POSTGRES_INSTALL_HINT", "TempPostgres", "find_pg_bindir", "postgres_user"]

logger = logging.getLogger(__name__)

#: Shell command that installs PostgreSQL with PostGIS (Debian).
POSTGRES_INSTALL_HINT = "apt-get install -y postgresql-15-postgis-3"
#: Role and database of the cluster (trust authentication: any password works).
DB_USER = "postgres"
DB_NAME = "postgres"


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
        raise ServerError(f"PostgreSQL not found (looked in {looked}); install it: {POSTGRES_INSTALL_HINT}")
    if not _has_postgis(folder):
        raise ServerError(
            f"PostGIS for the PostgreSQL in {folder} not found; install it: {POSTGRES_INSTALL_HINT}"
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


def postgres_user() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as: ``postgres`` when we are root, else nobody to switch to."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as exc:
        raise ServerError(
            "running as root, which PostgreSQL refuses, and there is no `postgres` user to run it as; "
            f"installing PostgreSQL creates one ({POSTGRES_INSTALL_HINT})"
        ) from exc


def _as_user(user: pwd.struct_passwd | None, cmd: list[str]) -> list[str]:
    if user is None:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", user.pw_name, "--", *cmd]
    return ["su", user.pw_name, "-s", "/bin/sh", "-c", shlex.join(cmd)]


def _postmaster_pid(datadir: Path) -> int | None:
    try:
        return int((datadir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class TempPostgres:
    """A PostgreSQL cluster in ``workdir/data``: what starting and stopping it needs.

    It holds no server object, so a server's finalizer may hold it.

    Attributes
    ----------
    workdir
        The folder of the cluster (data, socket, logs); the owner removes it.
    bindir
        Folder of PostgreSQL's programs (:func:`find_pg_bindir`).
    user
        The account PostgreSQL runs as (:func:`postgres_user`), or None for this one.
    port
        Port it listens on once started.
    started
        Whether :meth:`start` launched it and :meth:`stop` has not stopped it since.
    """

    workdir: Path
    bindir: Path
    user: pwd.struct_passwd | None
    port: int = 0
    started: bool = False

    @property
    def datadir(self) -> Path:
        """The cluster's data folder."""
        return self.workdir / "data"

    @property
    def pid(self) -> int | None:
        """Process id of the postmaster while started, else None."""
        return _postmaster_pid(self.datadir) if self.started else None

    def start(self, host: str, timeout: float) -> None:
        """Create the cluster with ``initdb`` and start it on a free port of ``host``.

        Raises
        ------
        ServerError
            ``initdb`` or ``pg_ctl start`` failed (the message quotes its log).
        """
        run_dir = self.workdir / "run"
        run_dir.mkdir()
        if self.user is not None:
            os.chown(run_dir, self.user.pw_uid, self.user.pw_gid)
        self._initdb(timeout)
        for attempt in (1, 2):
            self.port = process.free_port(host)
            options = [
                *("-c", f"listen_addresses={host}", "-p", str(self.port), "-k", str(run_dir)),
                *("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"),
            ]
            pg_ctl = [
                str(self.bindir / "pg_ctl"),
                *("-D", str(self.datadir), "-l", str(self.workdir / "postgres.log")),
                *("-w", "-t", str(int(timeout)), "-o", shlex.join(options), "start"),
            ]
            self.started = True
            try:
                process.run_checked(
                    _as_user(self.user, pg_ctl),
                    log_path=self.workdir / "pg_ctl.log",
                    what=f"pg_ctl start (server log: {self.workdir / 'postgres.log'})",
                    timeout=timeout + 10,
                    cwd=self.workdir,
                )
            except ServerError:
                self.stop()
                # Most likely another process took the port between choosing and binding it.
                if attempt == 2 or not process.port_in_use(self.port, host):
                    raise
                continue
            break
        logger.debug("PostgreSQL listens on %s:%d (data in %s)", host, self.port, self.datadir)

    def _initdb(self, timeout: float) -> None:
        initdb = [
            str(self.bindir / "initdb"),
            *("-D", str(self.datadir), "-U", DB_USER, "-A", "trust", "-E", "UTF8"),
            *("--no-locale", "--no-sync", "--no-instructions"),
        ]
        try:
            process.run_checked(
                _as_user(self.user, initdb),
                log_path=self.workdir / "initdb.log",
                what="initdb",
                timeout=timeout,
                cwd=self.workdir,
            )
        except ServerError as exc:
            if self.user is not None and "Permission denied" in str(exc):
                raise ServerError(
                    f"{exc}\nAs root, PostgreSQL runs as the `postgres` user, which must be able to enter "
                    f"{self.workdir.parent} and every folder above it: pass another tmp_root."
                ) from exc
            raise

    def stop(self) -> None:
        """Stop the postmaster (``pg_ctl stop``, else SIGQUIT, else SIGKILL); idempotent."""
        if not self.started:
            return
        self.started = False
        pid = _postmaster_pid(self.datadir)
        if pid is None:
            return
        cmd = _as_user(
            self.user,
            [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "-t", "30", "stop"],
        )
        try:
            process.run_checked(
                cmd, log_path=self.workdir / "pg_ctl.log", what="pg_ctl stop", timeout=40, cwd=self.workdir
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
                while process.pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if not process.pid_alive(pid):
                    return
