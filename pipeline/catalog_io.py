"""HTTP access to STAC APIs: bounded retries with exponential backoff on every request.

Every request pystac-client makes for a job (the landing page, conformance, ``POST /search`` and
the paging ``GET`` s) goes through one :class:`~pystac_client.stac_api_io.StacApiIO` session whose
adapter retries, with urllib3's :class:`~urllib3.util.Retry`:

* connection failures and read time-outs, and the answers that mean "try again later"
  (:data:`RETRY_STATUSES`: 429, 502, 503, 504), on every method, ``POST`` included (a search
  changes nothing on the server);
* at most ``catalog.retries`` times: the first retry at once, the n-th after
  ``catalog.backoff * 2**(n - 1)`` seconds (each sleep capped at :data:`MAX_SLEEP_S`), or after the
  server's ``Retry-After``, capped the same way. The defaults (5 retries, 0.5 s) give up after
  about 15 s of waiting.

Other 4xx answers (a bad query, a missing collection) are not retried: the same request would
fail again.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Self

from pystac_client.stac_api_io import StacApiIO
from urllib3 import BaseHTTPResponse
from urllib3.connectionpool import ConnectionPool
from urllib3.util import Retry

from pipeline.spec import CatalogSpec

__all__ = ["MAX_SLEEP_S", "RETRY_STATUSES", "backoff_wait_s", "retry_policy", "stac_api_io"]

log = logging.getLogger(__name__)

#: HTTP statuses that are retried: rate limited, bad gateway, unavailable, gateway time-out.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Longest sleep between two tries, seconds (also caps a server's ``Retry-After``).
MAX_SLEEP_S = 60.0


class _LoggedRetry(Retry):
    """urllib3's Retry that logs each retry, so a slow search says why it is slow."""

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> Self:
        new = super().increment(method, url, response, error, _pool, _stacktrace)
        cause = f"HTTP {response.status}" if response is not None else type(error).__name__
        log.warning("catalog request %s %s failed (%s); retry %d", method, url, cause, len(new.history))
        return new


def retry_policy(catalog: CatalogSpec) -> Retry:
    """The retry policy of a catalog's requests (see the module's description)."""
    return _LoggedRetry(
        total=catalog.retries,
        connect=catalog.retries,
        read=catalog.retries,
        status=catalog.retries,
        other=0,
        backoff_factor=catalog.backoff,
        backoff_max=MAX_SLEEP_S,
        retry_after_max=int(MAX_SLEEP_S),
        status_forcelist=RETRY_STATUSES,
        allowed_methods=None,
        respect_retry_after_header=True,
        raise_on_status=False,
    )


def stac_api_io(catalog: CatalogSpec) -> StacApiIO:
    """A pystac-client IO whose session retries as :func:`retry_policy` says, with the job's time-out."""
    return StacApiIO(max_retries=retry_policy(catalog), timeout=catalog.timeout)


def backoff_wait_s(catalog: CatalogSpec) -> float:
    """Seconds the backoff sleeps in all before a request is given up (without ``Retry-After``)."""
    return sum(min(MAX_SLEEP_S, catalog.backoff * 2.0 ** (n - 1)) for n in range(2, catalog.retries + 1))
