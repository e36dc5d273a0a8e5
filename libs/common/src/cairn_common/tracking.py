"""Signed tokens for email open pixels, click links and unsubscribe links.

The dispatcher writes them into emails; ingest's ``/t/o/{token}.gif``, ``/t/c/{token}`` and
``/t/u/{token}`` endpoints verify them and turn them into events (Email Opened, Email Link Clicked,
Unsubscribed). A token is ``base64url(json payload) + "." + base64url(HMAC-SHA256(secret, body))``,
so nobody without the secret can forge an unsubscribe or a click redirect (no open redirect).

Payload keys used by the dispatcher: ``d`` delivery id, ``p`` profile id, ``i`` instance id,
``s`` step id, ``j`` journey, ``c`` channel, ``a`` address, ``u`` the click target URL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any


class TokenError(ValueError):
    """A token that is malformed or whose signature does not match."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(body: str, secret: str | bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return _b64(hmac.new(key, body.encode("ascii"), hashlib.sha256).digest())


def sign(payload: dict[str, Any], secret: str | bytes) -> str:
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{_mac(body, secret)}"


def verify(token: str, secret: str | bytes) -> dict[str, Any]:
    body, sep, mac = token.partition(".")
    if not sep or not body or not mac:
        raise TokenError("malformed tracking token")
    if not hmac.compare_digest(mac, _mac(body, secret)):
        raise TokenError("tracking token signature does not match")
    try:
        payload = json.loads(_unb64(body))
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenError("malformed tracking token payload") from exc
    if not isinstance(payload, dict):
        raise TokenError("tracking token payload is not an object")
    return payload
