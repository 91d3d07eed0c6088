"""Child processes of the local servers (STAC APIs, object store): free ports, start, readiness, stop.

Each server runs in its own session (process group) with stdout and stderr merged into a log file
(a file never fills up and blocks the child the way an unread pipe does); errors quote the log's tail.
:class:`ManagedServer` is the lifecycle every server shares: stopped once, however it is left.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pipeline.errors import ServerError

__all__ = [
    "ManagedServer",
    "find_executable",
    "free_port",
    "get_json",
    "kill",
    "log_tail",
    "pid_alive",
    "port_in_use",
    "run_checked",
    "spawn",
    "stop",
    "wait_ready",
]

logger = logging.getLogger(__name__)


def find_executable(name: str, install: str, executable: str | os.PathLike[str] | None = None) -> Path:
    """Locate the command ``name``: ``executable`` when given, else the one next to
    ``sys.executable`` (the project's virtual environment, active or not), then the one on ``PATH``.

    Raises
    ------
    ServerError
        The command was not found; the message says ``install``.
    """
    if executable is not None:
        path = Path(executable)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ServerError(f"{name} executable {path} does not exist or is not executable")
        return path
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    raise ServerError(f"no {name} command next to {sys.executable} nor on PATH; {install}")


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on, as chosen by the kernel for port 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on ``host:port`` (connections lingering in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an exited child nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # The command name in parentheses may itself contain spaces and parentheses.
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


def log_tail(path: Path, lines: int = 25) -> str:
    """Return the last ``lines`` lines of a log file, or a note that it is empty or missing."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = "\n".join(text.rstrip().splitlines()[-lines:])
    return tail if tail else "(log is empty)"


def spawn(
    cmd: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a new session with stdout and stderr appended to ``log_path``.

    Raises
    ------
    ServerError
        The executable cannot be started.
    """
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise ServerError(f"cannot start {cmd[0]}: {exc}") from exc
    logger.debug("spawned pid %d: %s", proc.pid, " ".join(cmd))
    return proc


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop(proc: subprocess.Popen[bytes], *, grace: float = 5.0) -> None:
    """Stop a process started by :func:`spawn` and everything in its process group.

    SIGTERM first; SIGKILL for whatever still runs after ``grace`` seconds.
    """
    pgid = proc.pid
    if proc.returncode is None:
        _signal_group(pgid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            logger.warning("pid %d ignored SIGTERM for %.0f s; killing it", proc.pid, grace)
            _signal_group(pgid, signal.SIGKILL)
            proc.wait(grace)
    # The leader may have gone while a child of its own still runs in the group.
    _signal_group(pgid, signal.SIGKILL)


def kill(proc: subprocess.Popen[bytes], *, timeout: float = 10.0) -> None:
    """SIGKILL a process started by :func:`spawn` and its whole process group, and reap it.

    For servers that ignore SIGTERM (SeaweedFS's ``weed``), where :func:`stop` would only wait.
    """
    _signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)


def wait_ready(
    base_url: str,
    paths: Sequence[str],
    *,
    proc: subprocess.Popen[bytes],
    log_path: Path,
    name: str,
    timeout: float,
) -> None:
    """Poll ``base_url + path`` for each path until all answer HTTP 200.

    Raises
    ------
    ServerError
        The process exited, or ``timeout`` seconds passed; the message holds the log's tail.
    """
    deadline = time.monotonic() + timeout
    delay = 0.02
    pending = list(paths)
    last_error = "no answer yet"
    while pending:
        code = proc.poll()
        if code is not None:
            raise ServerError(
                f"{name} exited with code {code} before it answered {base_url}; "
                f"last lines of its log ({log_path}):\n{log_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(base_url + pending[0], timeout=2.0) as response:
                if response.status == 200:
                    pending.pop(0)
                    continue
                last_error = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as exc:
            last_error = str(exc)
        if time.monotonic() > deadline:
            raise ServerError(
                f"{name} did not answer {base_url}{pending[0]} within {timeout:.0f} s ({last_error}); "
                f"last lines of its log ({log_path}):\n{log_tail(log_path)}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def run_checked(
    cmd: Sequence[str],
    *,
    log_path: Path,
    what: str,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> None:
    """Run ``cmd`` to completion with its output appended to ``log_path``.

    Raises
    ------
    ServerError
        The command cannot start, fails or runs past ``timeout``; the message holds the log's tail.
    """
    with open(log_path, "ab") as log:
        try:
            code = subprocess.run(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                timeout=timeout,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired as exc:
            raise ServerError(
                f"{what} took longer than {timeout:.0f} s; last lines of its log ({log_path}):\n"
                f"{log_tail(log_path)}"
            ) from exc
        except OSError as exc:
            raise ServerError(f"{what}: cannot start {cmd[0]}: {exc}") from exc
    if code != 0:
        raise ServerError(
            f"{what} failed with exit code {code}; last lines of its log ({log_path}):\n{log_tail(log_path)}"
        )


def get_json(url: str, timeout: float = 10.0) -> Any:
    """GET ``url`` and decode its JSON body.

    Raises
    ------
    ServerError
        The request fails or the body is not JSON.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ServerError(f"GET {url} failed: {exc}") from exc


class ManagedServer:
    """Lifecycle shared by the servers: closed once, by :meth:`close`, a ``with`` block, garbage
    collection or interpreter exit, through the ``weakref.finalize`` a subclass sets as
    ``_finalizer`` (it runs the shutdown at most once)."""

    _finalizer: weakref.finalize[..., Any]

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return not self._finalizer.alive

    def close(self) -> None:
        """Stop the server and everything it started, and remove its files; idempotent."""
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
