"""Signed email tracking links: open pixel, click redirect, one-click unsubscribe.

The dispatcher writes these links into emails; ingest serves them and turns a hit into an
``Email Opened`` / ``Email Link Clicked`` / ``Unsubscribed`` event. Both use this module, so a
link written by one version verifies in the other.

A token is ``base64url(payload) "." base64url(HMAC-SHA256(secret, kind "." base64url(payload)))``
with no padding. The payload names the delivery it belongs to and, for a click, the target URL;
the signature covers the link kind too, so an open token cannot be replayed as a click or an
unsubscribe, and a click link cannot be retargeted to another URL.

Paths (relative to the public tracking base URL, ``CAIRN_TRACKING_BASE_URL``):

- ``/t/o/{token}.gif``  1x1 transparent GIF, enters ``Email Opened``
- ``/t/c/{token}``      302 to the signed URL, enters ``Email Link Clicked``
- ``/t/u/{token}``      GET shows a confirmation; POST (RFC 8058 one-click) unsubscribes
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from typing import Literal

import msgspec

LinkKind = Literal["open", "click", "unsubscribe"]

OPEN_PATH = "/t/o/"
CLICK_PATH = "/t/c/"
UNSUBSCRIBE_PATH = "/t/u/"
_PREFIX: dict[LinkKind, str] = {"open": "o", "click": "c", "unsubscribe": "u"}
MAX_TOKEN_LENGTH = 8192


class InvalidToken(Exception):
    """The token is malformed, its signature does not match, or it is of another link kind."""


class TrackedMessage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Which message a link belongs to. Field names are short on the wire to keep URLs short."""

    delivery_id: str = msgspec.field(name="d")
    instance_id: str = msgspec.field(name="i")
    journey: str = msgspec.field(name="j")
    step_id: str = msgspec.field(name="s")
    profile_id: str = msgspec.field(name="p")
    channel: str = msgspec.field(default="email", name="ch")
    address: str | None = msgspec.field(default=None, name="a")
    """The address the message went to; an unsubscribe suppresses it (else the whole profile)."""


class LinkPayload(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    message: TrackedMessage = msgspec.field(name="m")
    url: str | None = msgspec.field(default=None, name="u")
    """The click target; part of the signed payload so a link cannot be retargeted."""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(LinkPayload)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidToken("token is not base64url") from exc


def _signature(secret: str | bytes, kind: LinkKind, body: str) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, f"{_PREFIX[kind]}.{body}".encode("ascii"), hashlib.sha256).digest()


def sign(secret: str | bytes, kind: LinkKind, payload: LinkPayload) -> str:
    if not secret:
        raise ValueError("a tracking secret is required to sign links")
    if kind == "click" and not payload.url:
        raise ValueError("a click link needs the target url")
    body = _b64(_encoder.encode(payload))
    return f"{body}.{_b64(_signature(secret, kind, body))}"


def verify(secret: str | bytes | Sequence[str | bytes], kind: LinkKind, token: str) -> LinkPayload:
    """The payload of a genuine token of this kind; ``InvalidToken`` otherwise.

    ``secret`` may be a list (the current secret first, then retired ones still honoured).
    """
    if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
        raise InvalidToken("malformed token")
    body, sig = token.split(".")
    given = _unb64(sig)
    candidates = [secret] if isinstance(secret, str | bytes) else list(secret)
    if not any(s and hmac.compare_digest(given, _signature(s, kind, body)) for s in candidates):
        raise InvalidToken("bad signature")
    try:
        payload = _decoder.decode(_unb64(body))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidToken(f"bad payload: {exc}") from exc
    if kind == "click" and not payload.url:
        raise InvalidToken("click token without a url")
    return payload


def open_url(base_url: str, secret: str | bytes, message: TrackedMessage) -> str:
    """The open-tracking pixel's URL for ``message``."""
    token = sign(secret, "open", LinkPayload(message=message))
    return f"{base_url.rstrip('/')}{OPEN_PATH}{token}.gif"


def click_url(base_url: str, secret: str | bytes, message: TrackedMessage, url: str) -> str:
    """A tracked link that redirects to ``url``."""
    token = sign(secret, "click", LinkPayload(message=message, url=url))
    return f"{base_url.rstrip('/')}{CLICK_PATH}{token}"


def unsubscribe_url(base_url: str, secret: str | bytes, message: TrackedMessage) -> str:
    """The ``List-Unsubscribe`` URL (send it with ``List-Unsubscribe-Post:
    List-Unsubscribe=One-Click``, RFC 8058)."""
    token = sign(secret, "unsubscribe", LinkPayload(message=message))
    return f"{base_url.rstrip('/')}{UNSUBSCRIBE_PATH}{token}"
