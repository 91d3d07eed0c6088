"""One writer per output: a lease object next to the outputs, naming the run that holds it.

A run takes the lock of its output folder before it writes or deletes anything there, and gives
it back when it ends. The lock is one small JSON object, :data:`LOCK_NAME`, in the output folder
(a local folder or an object-store prefix, through :class:`~pipeline.storage.Location`); it names
the holder (host, process id and its start time, job, run id, when taken) and carries a lease: an
expiry time that a thread of the holder pushes forward while the run lives.

Another run that finds the lock refuses to start, naming the holder, unless the lock is stale:

* its lease expired (the holder stopped renewing it: killed, frozen, or its machine gone), or
* it was taken on this machine by a process that no longer runs (checked by process id and start
  time, so a reused process id does not keep a dead run's lock alive). "This machine" means the
  same host name and the same boot (Linux's boot id), so a machine of the same name elsewhere, or
  one rebooted since, never judges a live run's process by its own process table.

A stale lock is replaced, with a warning that names its holder. Taking the lock is atomic on a
local disk (exclusive create); on an object store, which has no exclusive create here, the run
writes its lock, waits a moment and reads it back, and refuses when another run's lock replaced
it. Within one process the lock is re-entrant: the stages of a run (prepare, infer, publish) each
take it, and only the outermost release gives it back.

A run whose stages run in other processes (a Prefect flow's tasks on Dask workers) holds the lock
in the process that chains them, and each stage runs inside :func:`run_under` with the holder: the
stage checks that the lock still names that run, and its own :func:`hold_output` is then a re-entry
(the holder's process alone renews and releases the lock).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from pipeline.errors import OutputLockedError
from pipeline.storage import Location, LocationLike

__all__ = ["LEASE_SECONDS", "LOCK_NAME", "LockHolder", "hold_output", "read_lock", "run_under"]

log = logging.getLogger(__name__)

#: Name of the lock object inside an output folder.
LOCK_NAME = ".seg2change.lock"
#: Seconds a lease lasts without renewal; the holder renews it every third of that.
LEASE_SECONDS = 120.0
#: Seconds a run waits before reading back the lock it wrote on an object store.
_SETTLE_SECONDS = 0.5


@dataclass(frozen=True)
class LockHolder:
    """The run that holds an output's lock.

    Attributes
    ----------
    host
        Host name of the holding process.
    boot
        Boot id of its machine (empty where the system has none).
    pid
        Its process id.
    started
        Its process start time (seconds since the epoch), to tell a reused process id apart.
    job
        What the run does (a short description: the job's output and prompts).
    run
        Unique identifier of the run.
    acquired
        When the lock was taken (seconds since the epoch).
    expires
        When the lease ends unless renewed (seconds since the epoch).
    """

    host: str
    boot: str
    pid: int
    started: float
    job: str
    run: str
    acquired: float
    expires: float

    def describe(self) -> str:
        """The holder in words, for messages."""
        taken = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.acquired))
        return f"run {self.run[:8]} ({self.job}) of process {self.pid} on host {self.host}, since {taken}"

    def stale_because(self, now: float) -> str | None:
        """Why this lock no longer protects a live run, or None when its run may still be alive."""
        if now > self.expires:
            return f"its lease expired {now - self.expires:.0f} s ago"
        here = self.host == socket.gethostname() and self.boot == _boot_id()
        if here and not _process_alive(self.pid, self.started):
            return f"process {self.pid} no longer runs on this host"
        return None


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_alive(pid: int, started: float) -> bool:
    try:
        process = psutil.Process(pid)
        return bool(abs(process.create_time() - started) < 1.0 and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def read_lock(output: LocationLike) -> LockHolder | None:
    """The holder named by an output folder's lock, or None when there is no lock.

    A lock that cannot be parsed (cut short by a crash while it was written) counts as expired.
    """
    location = Location.parse(output) / LOCK_NAME
    try:
        text = location.read_text()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(text)
        return LockHolder(**{k: doc[k] for k in LockHolder.__dataclass_fields__})
    except (json.JSONDecodeError, KeyError, TypeError):
        return LockHolder("?", "", -1, 0.0, "unreadable lock", "????????", 0.0, 0.0)


class _Lease:
    """A lock this process holds: renewed by a daemon thread until released."""

    def __init__(self, location: Location, holder: LockHolder, lease_seconds: float) -> None:
        self.location = location
        self.holder = holder
        self.lease_seconds = lease_seconds
        self.depth = 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease {location}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            current = read_lock(self.location.parent)
            if current is None or current.run != self.holder.run:
                log.error(
                    "the lock %s no longer names this run (%s); another run may write the same output",
                    self.location,
                    "removed" if current is None else current.describe(),
                )
                return
            self.holder = _with_expiry(self.holder, time.time() + self.lease_seconds)
            try:
                self.location.write_text(_dump(self.holder))
            except Exception as exc:  # the next renewal tries again, before the lease ends
                log.warning("could not renew the lock %s: %s", self.location, exc)

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        current = read_lock(self.location.parent)
        if current is not None and current.run == self.holder.run:
            self.location.remove()


class _Joined:
    """A lock another process of the same run holds and renews; this process only works under it."""

    def __init__(self, holder: LockHolder) -> None:
        self.holder = holder
        self.depth = 1

    def release(self) -> None:
        """Nothing to give back: the holder's process releases the lock."""


_held: dict[str, _Lease | _Joined] = {}
_held_lock = threading.Lock()


def _with_expiry(holder: LockHolder, expires: float) -> LockHolder:
    return LockHolder(**{**asdict(holder), "expires": expires})


def _dump(holder: LockHolder) -> str:
    return json.dumps(asdict(holder), indent=1)


def _refusal(output: Location, holder: LockHolder) -> OutputLockedError:
    return OutputLockedError(
        f"{output} is being written by {holder.describe()}; wait until it ends, or stop it, or choose "
        f"another output. A lock whose run died is recovered by itself once its lease expires "
        f"(at most {LEASE_SECONDS:.0f} s); remove {output / LOCK_NAME} by hand only when you are sure "
        "no run writes there"
    )


def _take(output: Location, holder: LockHolder) -> None:
    """Write the lock, refusing when a live run holds it."""
    location = output / LOCK_NAME
    current = read_lock(output)
    if current is not None:
        reason = current.stale_because(time.time())
        if reason is None:
            raise _refusal(output, current)
        log.warning("recovering the stale lock of %s: %s held it, and %s", output, current.describe(), reason)
        again = read_lock(output)
        if again is not None and again.run != current.run:
            # Another run recovered it first and holds it now.
            raise _refusal(output, again)
        location.remove()
    if location.is_local:
        # Written aside, then linked into place: the lock appears whole or not at all (a reader
        # never finds it empty), and the link fails when another run's lock is there.
        path = location.local_path
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(f"{path.name}.{holder.run[:8]}")
        try:
            aside.write_text(_dump(holder))
            try:
                os.link(aside, path)
            except FileExistsError:
                raise
            except OSError:  # a file system without hard links: an exclusive create
                with os.fdopen(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644), "w") as f:
                    f.write(_dump(holder))
        except FileExistsError:
            raced = read_lock(output)
            raise _refusal(output, raced or current or holder) from None
        finally:
            aside.unlink(missing_ok=True)
        return
    location.write_text(_dump(holder))
    time.sleep(_SETTLE_SECONDS)
    raced = read_lock(output)
    if raced is None or raced.run != holder.run:
        raise _refusal(output, raced or holder)


@contextlib.contextmanager
def hold_output(
    output: LocationLike, *, job: str = "", lease_seconds: float = LEASE_SECONDS
) -> Iterator[LockHolder]:
    """Hold the lock of an output folder for the duration of the block (re-entrant in a process).

    Parameters
    ----------
    output
        The output folder (local path or URL).
    job
        A short description of the job, shown to a run that is refused.
    lease_seconds
        How long the lease lasts without renewal.

    Yields
    ------
    LockHolder
        This run's entry in the lock.

    Raises
    ------
    OutputLockedError
        Another live run holds the lock; the message names it.
    """
    location = Location.parse(output)
    key = str(location)
    with _held_lock:
        lease = _held.get(key)
        if lease is not None:
            lease.depth += 1
        else:
            now = time.time()
            holder = LockHolder(
                host=socket.gethostname(),
                boot=_boot_id(),
                pid=os.getpid(),
                started=psutil.Process().create_time(),
                job=job or str(location),
                run=uuid.uuid4().hex,
                acquired=now,
                expires=now + lease_seconds,
            )
            _take(location, holder)
            lease = _held[key] = _Lease(location / LOCK_NAME, holder, lease_seconds)
    try:
        yield lease.holder
    finally:
        with _held_lock:
            lease.depth -= 1
            if lease.depth == 0:
                del _held[key]
                lease.release()


@contextlib.contextmanager
def run_under(output: LocationLike, holder: LockHolder) -> Iterator[LockHolder]:
    """Work on an output under a lock that ``holder``'s process took (:func:`hold_output`) for the
    whole run, e.g. a flow's process for its tasks; :func:`hold_output` inside the block re-enters it.

    Parameters
    ----------
    output
        The output folder (local path or URL).
    holder
        What :func:`hold_output` yielded in the process that holds the lock.

    Yields
    ------
    LockHolder
        ``holder``.

    Raises
    ------
    OutputLockedError
        The output's lock no longer names ``holder``'s run (its lease expired and another run took
        it, or it was removed): nothing may be written; run the job again.
    """
    location = Location.parse(output)
    key = str(location)
    with _held_lock:
        lease = _held.get(key)
        if lease is None:
            current = read_lock(location)
            if current is None or current.run != holder.run:
                raise OutputLockedError(
                    f"{location} is no longer locked by {holder.describe()}, the run this step belongs "
                    f"to ({'no lock' if current is None else 'now ' + current.describe()}); nothing "
                    "was written by this step: run the job again once no other run writes there"
                )
            lease = _held[key] = _Joined(holder)
        elif lease.holder.run != holder.run:
            raise _refusal(location, lease.holder)
        else:
            lease.depth += 1
    try:
        yield holder
    finally:
        with _held_lock:
            lease.depth -= 1
            if lease.depth == 0:
                del _held[key]
                lease.release()
