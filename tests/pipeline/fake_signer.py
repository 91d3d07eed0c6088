"""Href signers for the tests, named by jobs as ``tests.pipeline.fake_signer:<function>``.

:func:`sign` does what Planetary Computer's ``sign_url`` does, offline: it appends a SAS-like
token to the hrefs of one storage host and returns every other href unchanged.
"""

from __future__ import annotations

from urllib.parse import urlsplit

#: The token :func:`sign` appends; it must never reach a published output.
TOKEN = "sig=FAKE-SAS-TOKEN-0123456789"
#: Hrefs on this host are signed (like ``*.blob.core.windows.net`` for Planetary Computer).
SIGNED_HOST = "blob.example.net"

NOT_A_FUNCTION = 3


def sign(href: str) -> str:
    """Append :data:`TOKEN` to an href of :data:`SIGNED_HOST`; return any other href unchanged."""
    parts = urlsplit(href)
    if parts.hostname != SIGNED_HOST or TOKEN in parts.query:
        return href
    return f"{href}{'&' if parts.query else '?'}{TOKEN}"


def sign_everything(href: str) -> str:
    """Append :data:`TOKEN` to any href."""
    return f"{href}{'&' if '?' in href else '?'}{TOKEN}"


def refuse(href: str) -> str:
    """Fail like a signer whose token service cannot be reached."""
    raise ConnectionError(f"token service unreachable while signing {href}")


def returns_none(href: str) -> None:
    """A broken signer that forgets to return the href."""
