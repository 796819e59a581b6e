"""Who may call an HTTP API: the rules the device's gateway and the cloud API share.

- An API bound off loopback must have a bearer token (``off_loopback_problem`` says so at
  config load, in the words both config loaders print).
- A request carries ``Authorization: Bearer <token>``; ``bearer_ok`` compares it in constant
  time (``hmac.compare_digest``), so the token cannot be guessed byte by byte from timings.
"""

from __future__ import annotations

import hmac

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
BEARER_HINT = "send 'Authorization: Bearer <token>'"


def bearer_ok(header: bytes | str, token: str) -> bool:
    """True when an ``Authorization`` header value is exactly ``Bearer <token>``."""
    given = header.encode() if isinstance(header, str) else header
    return hmac.compare_digest(given, f"Bearer {token}".encode())


def off_loopback_problem(field: str, host: str | None, token_set: bool, variable: str) -> str | None:
    """The config problem of an API bound to ``host`` without a token, or None."""
    if host is None or host in LOOPBACK_HOSTS or token_set:
        return None
    return (
        f"{field} {host!r} is not loopback: set api_token ({variable}) so the API is not open to the network"
    )
