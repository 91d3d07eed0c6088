"""A job whose catalog's hrefs need a token, as Planetary Computer's do, prepared end to end offline.

A generated scene's COGs are served over HTTP on 127.0.0.1 by a server that refuses (403) every
request without the fake signer's token; the job names the signer in ``catalog.sign``. Discovery
signs every asset href, the input cube is read through the signed hrefs only, holds the same pixels
as the cube read from the files directly, and no output file carries the token.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
import xarray as xr
from starlette.responses import PlainTextResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from pipeline.cube import prepare_cube
from pipeline.demo import demo_job_fields
from pipeline.discover import discover
from pipeline.spec import JobSpec
from pipeline.synthetic import GeneratedScene, SceneSpec, generate_scene

TOKEN = "sig=FAKE-SAS-TOKEN-0123456789"  # tests/pipeline/fake_signer.py's


class TokenServer:
    """Static files (with HTTP ranges) that answer 403 to any request without :data:`TOKEN`."""

    def __init__(self, root: Path) -> None:
        self.files = StaticFiles(directory=str(root))
        self.queries: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = scope["query_string"].decode()
            self.queries.append(query)
            if query != TOKEN:
                await PlainTextResponse("AuthenticationFailed: no valid SAS token", status_code=403)(
                    scope, receive, send
                )
                return
        await self.files(scope, receive, send)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> GeneratedScene:
    return generate_scene(SceneSpec(size=256, seed=1), tmp_path_factory.mktemp("signed") / "scene")


@pytest.fixture
def token_server(scene: GeneratedScene) -> Iterator[tuple[str, TokenServer]]:
    app = TokenServer(scene.root)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the test's file server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def _job(scene: GeneratedScene, catalog: dict[str, Any], output: Path) -> JobSpec:
    fields = demo_job_fields(scene, str(scene.items_path), output)
    for name in ("asset_roots", "prompts", "models"):
        fields.pop(name, None)
    return JobSpec.build(**{**fields, "catalog": catalog, "block_size": 256})


def test_a_signed_catalog_is_read_through_its_signed_hrefs_only(
    scene: GeneratedScene, token_server: tuple[str, TokenServer], tmp_path: Path
) -> None:
    base, server = token_server
    items = [json.loads(line) for line in scene.items_path.read_text().splitlines() if line.strip()]
    for item in items:
        for asset in item["assets"].values():
            asset["href"] = f"{base}/{Path(asset['href']).relative_to(scene.root)}"
    remote = tmp_path / "remote.ndjson"
    remote.write_text("\n".join(json.dumps(item) for item in items) + "\n")

    some_href = items[0]["assets"]["red"]["href"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(some_href, timeout=10)  # unsigned: the server refuses it
    assert refused.value.code == 403

    job = _job(
        scene, {"url": str(remote), "sign": "tests.pipeline.fake_signer:sign_everything"}, tmp_path / "out"
    )
    found = discover(job)
    hrefs = [a["href"] for epoch in found.items.values() for item in epoch for a in item["assets"].values()]
    assert hrefs and all(href.startswith(base) and href.endswith(f"?{TOKEN}") for href in hrefs)
    server.queries.clear()
    signed = prepare_cube(job, found, progress=False)
    assert server.queries and set(server.queries) == {TOKEN}  # every read carried the token

    local = _job(scene, {"url": str(scene.items_path)}, tmp_path / "local")
    direct = prepare_cube(local, discover(local), progress=False)
    with (
        xr.open_zarr(str(signed.path), consolidated=None) as a,
        xr.open_zarr(str(direct.path), consolidated=None) as b,
    ):
        assert set(a.data_vars) == set(b.data_vars)
        for name in a.data_vars:
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)

    leaked = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and b"FAKE-SAS-TOKEN" in p.read_bytes()]
    assert not leaked, f"the signing token reached the outputs: {leaked}"
    assert json.loads((tmp_path / "out" / "provenance.json").read_text())["href_signer"].endswith(
        ":sign_everything"
    )
