"""A small STAC API on 127.0.0.1 that answers errors on cue, for the retry and signer tests.

It serves a landing page, ``POST /search`` (the first page of its items) and a ``GET`` next page.
It filters nothing (it conforms to neither *filter* nor *query*), so discovery filters on the
client. ``faults`` maps a request, ``"POST /search"``, ``"GET /search"`` (the next page) or
``"GET /"``, to the statuses it answers before it answers normally; ``always`` maps a request to a
status it always answers. Every request is logged in ``requests`` as ``"METHOD /path"``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass
class FakeApi:
    """The server's state: its items, the faults still to answer and the requests seen."""

    items: list[dict[str, Any]]
    faults: dict[str, list[int]] = field(default_factory=dict)
    always: dict[str, int] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, request: str) -> int:
        """How many times ``request`` (``"METHOD /path"``) was received."""
        return self.requests.count(request)


def _handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, doc: dict[str, Any] | None = None) -> None:
            body = json.dumps(doc if doc is not None else {"code": status, "description": "fault"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if status in (429, 503):
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(body)

        def _fault(self, key: str) -> int | None:
            with api.lock:
                api.requests.append(key)
                if key in api.always:
                    return api.always[key]
                pending = api.faults.get(key)
                return pending.pop(0) if pending else None

        def _page(self, first: bool) -> dict[str, Any]:
            half = len(api.items) // 2
            links = [{"rel": "root", "href": f"{api.url}/", "type": "application/json"}]
            if first:
                links.append(
                    {
                        "rel": "next",
                        "href": f"{api.url}/search?page=2",
                        "type": "application/geo+json",
                        "method": "GET",
                    }
                )
            return {
                "type": "FeatureCollection",
                "features": api.items[:half] if first else api.items[half:],
                "links": links,
            }

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = urlsplit(self.path).path
            status = self._fault(f"GET {path}")
            if status is not None:
                self._send(status)
            elif path == "/":
                self._send(200, _landing(api.url))
            elif path == "/search":
                self._send(200, self._page(first=False))
            else:
                self._send(404)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = urlsplit(self.path).path
            status = self._fault(f"POST {path}")
            if status is not None:
                self._send(status)
            elif path == "/search":
                self._send(200, self._page(first=True))
            else:
                self._send(404)

    return Handler


def _landing(url: str) -> dict[str, Any]:
    return {
        "type": "Catalog",
        "stac_version": "1.1.0",
        "id": "fake-api",
        "description": "fake STAC API for the tests",
        "conformsTo": [
            "https://api.stacspec.org/v1.0.0/core",
            "https://api.stacspec.org/v1.0.0/item-search",
        ],
        "links": [
            {"rel": "self", "href": f"{url}/", "type": "application/json"},
            {"rel": "root", "href": f"{url}/", "type": "application/json"},
            {"rel": "search", "href": f"{url}/search", "type": "application/geo+json", "method": "POST"},
            {"rel": "search", "href": f"{url}/search", "type": "application/geo+json", "method": "GET"},
        ],
    }


@contextmanager
def fake_api(items: list[dict[str, Any]], **state: Any) -> Iterator[FakeApi]:
    """Serve ``items`` on a free port of 127.0.0.1 until the block ends."""
    api = FakeApi(items=[json.loads(json.dumps(i)) for i in items], **state)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
