"""Signed tokens for email open pixels, click links and unsubscribe links.

The dispatcher writes them into emails; ingest's ``/t/o/{token}.gif``, ``/t/c/{token}`` and
``/t/u/{token}`` endpoints verify them and turn them into events (Email Opened, Email Link Clicked,
Unsubscribed). A token is ``base64url(json payload) + "." + base64url(HMAC-SHA256(secret, body))``,
so nobody without the secret can forge an unsubscribe or a click redirect (no open redirect), and
a click link cannot be retargeted: its URL is part of the signed payload.

Payload keys: ``d`` delivery id, ``p`` profile id, ``i`` instance id, ``s`` step id, ``j`` journey,
``c`` channel, ``a`` address, ``u`` the click target URL, and optionally ``k`` the link kind
(``open``/``click``/``unsubscribe``): when present, a token is honoured only by the endpoint of its
kind. The typed helpers below (``open_url``, ``click_url``, ``unsubscribe_url``, ``read_link``)
write and check ``k``; ``sign``/``verify`` are the raw layer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any, Literal

import msgspec

LinkKind = Literal["open", "click", "unsubscribe"]
OPEN_PATH = "/t/o/"
CLICK_PATH = "/t/c/"
UNSUBSCRIBE_PATH = "/t/u/"
MAX_TOKEN_LENGTH = 8192


class TokenError(ValueError):
    """A token that is malformed or whose signature does not match."""


InvalidToken = TokenError


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenError("tracking token is not base64url") from exc


def _mac(body: str, secret: str | bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return _b64(hmac.new(key, body.encode("ascii"), hashlib.sha256).digest())


def sign(payload: dict[str, Any], secret: str | bytes) -> str:
    if not secret:
        raise ValueError("a tracking secret is required to sign links")
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{_mac(body, secret)}"


def verify(token: str, secret: str | bytes | Sequence[str | bytes]) -> dict[str, Any]:
    """The payload of a genuine token. ``secret`` may be a list: the current secret first, then
    retired ones still honoured."""
    if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        raise TokenError("malformed tracking token")
    body, sep, mac = token.partition(".")
    if not sep or not body or not mac:
        raise TokenError("malformed tracking token")
    secrets = [secret] if isinstance(secret, str | bytes) else list(secret)
    if not any(s and hmac.compare_digest(mac, _mac(body, s)) for s in secrets):
        raise TokenError("tracking token signature does not match")
    try:
        payload = json.loads(_unb64(body))
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenError("malformed tracking token payload") from exc
    if not isinstance(payload, dict):
        raise TokenError("tracking token payload is not an object")
    return payload


# ---- the typed layer ------------------------------------------------------------------------


class TrackedMessage(msgspec.Struct, frozen=True, kw_only=True):
    """Which message a link belongs to."""

    delivery_id: str
    instance_id: str
    journey: str
    step_id: str
    profile_id: str
    channel: str = "email"
    address: str | None = None
    """The address the message went to; an unsubscribe suppresses it (else the whole profile)."""


class Link(msgspec.Struct, frozen=True):
    message: TrackedMessage
    url: str | None = None


def _payload(kind: LinkKind, message: TrackedMessage, url: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "k": kind,
        "d": message.delivery_id,
        "p": message.profile_id,
        "i": message.instance_id,
        "s": message.step_id,
        "j": message.journey,
        "c": message.channel,
    }
    if message.address is not None:
        payload["a"] = message.address
    if url is not None:
        payload["u"] = url
    return payload


def read_link(secret: str | bytes | Sequence[str | bytes], kind: LinkKind, token: str) -> Link:
    """Verify a token for the endpoint of ``kind``; ``TokenError`` if it is not one."""
    payload = verify(token, secret)
    if payload.get("k", kind) != kind:
        raise TokenError(f"not a {kind} link")
    fields = {"d": "delivery_id", "p": "profile_id", "i": "instance_id", "s": "step_id",
              "j": "journey"}  # fmt: skip
    values: dict[str, Any] = {}
    for key, name in fields.items():
        value = payload.get(key)
        if not isinstance(value, str) or not value:
            raise TokenError(f"tracking token lacks {name}")
        values[name] = value
    channel = payload.get("c") or "email"
    address = payload.get("a")
    url = payload.get("u")
    if not isinstance(channel, str) or not isinstance(address, str | None):
        raise TokenError("malformed tracking token payload")
    if kind == "click" and (not isinstance(url, str) or not url):
        raise TokenError("click token without a url")
    message = TrackedMessage(channel=channel, address=address, **values)
    return Link(message, url if isinstance(url, str) else None)


def open_url(base_url: str, secret: str | bytes, message: TrackedMessage) -> str:
    """The open-tracking pixel's URL for ``message``."""
    return f"{base_url.rstrip('/')}{OPEN_PATH}{sign(_payload('open', message), secret)}.gif"


def click_url(base_url: str, secret: str | bytes, message: TrackedMessage, url: str) -> str:
    """A tracked link that redirects to ``url``."""
    token = sign(_payload("click", message, url), secret)
    return f"{base_url.rstrip('/')}{CLICK_PATH}{token}"


def unsubscribe_url(base_url: str, secret: str | bytes, message: TrackedMessage) -> str:
    """The ``List-Unsubscribe`` URL (send it with ``List-Unsubscribe-Post:
    List-Unsubscribe=One-Click``, RFC 8058)."""
    token = sign(_payload("unsubscribe", message), secret)
    return f"{base_url.rstrip('/')}{UNSUBSCRIBE_PATH}{token}"
