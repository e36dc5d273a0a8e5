"""Sealed email tracking links: open pixel, click redirect, one-click unsubscribe (decision 0055).

The dispatcher writes these links into emails; ingest serves them and turns a hit into an
``Email Opened`` / ``Email Link Clicked`` / ``Unsubscribed`` event. Both use this module, so a
link written by one version opens in the other.

A token is ``base64url(header ‖ AES-SIV(key[kind], payload, ad=header))`` without padding:

- ``header`` is one byte, the format version (two bits, ``01``) and the key id (six bits);
- the payload is a msgpack array (no field names): when it was issued, the message it belongs
  to (delivery, instance, journey, step, profile, channel, address) and, for a click, the target;
- each kind has its own key, ``HKDF-SHA256(secret, salt="cairn-tracking-v1", info=kind)``, so an
  open token is no click or unsubscribe token; AES-SIV needs no nonce (nothing to repeat under
  millions of tokens) and authenticates, so a token can be neither read nor retargeted.

Several secrets may be given (the current one first, then retired ones still honoured); only the
first seals. A token older than its kind's time-to-live is ``ExpiredToken``.

Paths (relative to the public tracking base URL, ``CAIRN_TRACKING_BASE_URL``):

- ``/t/o/{token}.gif``  1x1 transparent GIF, enters ``Email Opened``
- ``/t/c/{token}``      302 to the sealed URL, enters ``Email Link Clicked``
- ``/t/u/{token}``      GET shows a confirmation; POST (RFC 8058 one-click) unsubscribes
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Sequence
from typing import Literal

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

LinkKind = Literal["open", "click", "unsubscribe"]
KINDS: tuple[LinkKind, ...] = ("open", "click", "unsubscribe")

OPEN_PATH = "/t/o/"
CLICK_PATH = "/t/c/"
UNSUBSCRIBE_PATH = "/t/u/"
MAX_TOKEN_LENGTH = 4096
VERSION = 0b01
_SALT = b"cairn-tracking-v1"


class InvalidToken(Exception):
    """The token is malformed, was not sealed with a known secret, or is of another kind."""


class ExpiredToken(InvalidToken):
    """A genuine token, older than its kind's time-to-live."""


class TrackedMessage(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """Which message a link belongs to."""

    delivery_id: str
    instance_id: str
    journey: str
    step_id: str
    profile_id: str
    channel: str = "email"
    address: str | None = None
    """The address the message went to; an unsubscribe suppresses it (else the whole profile)."""


class LinkPayload(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    message: TrackedMessage
    url: str | None = None
    """The click target; sealed with the rest, so a link cannot be retargeted."""
    issued: int = 0
    """Unix seconds; set when the token is sealed."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(LinkPayload)


def _hkdf(secret: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=_SALT, info=info).derive(secret)


class _Key:
    def __init__(self, secret: str) -> None:
        raw = secret.encode()
        self.id = _hkdf(raw, b"key-id", 1)[0] & 0x3F
        self.header = bytes([VERSION << 6 | self.id])
        self.ciphers = {kind: AESSIV(_hkdf(raw, kind.encode(), 64)) for kind in KINDS}


class TrackingKeys:
    """The keys of one or more tracking secrets: the first seals, all open."""

    def __init__(self, secrets: str | Sequence[str]) -> None:
        listed = [secrets] if isinstance(secrets, str) else list(secrets)
        self.secrets = [s for s in listed if s]
        if not self.secrets:
            raise ValueError("a tracking secret is required to seal links")
        self._keys = [_Key(s) for s in self.secrets]

    def seal(self, kind: LinkKind, payload: LinkPayload, *, now: float | None = None) -> str:
        if kind == "click" and not payload.url:
            raise ValueError("a click link needs the target url")
        issued = int(time.time() if now is None else now)
        body = _encoder.encode(msgspec.structs.replace(payload, issued=issued))
        key = self._keys[0]
        sealed = key.header + key.ciphers[kind].encrypt(body, [key.header])
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open(
        self, kind: LinkKind, token: str, *, ttl: float | None = None, now: float | None = None
    ) -> LinkPayload:
        """The payload of a genuine token of this kind, no older than ``ttl`` seconds;
        ``ExpiredToken`` if it is older, ``InvalidToken`` if it is not genuine."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("malformed token")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError) as exc:
            raise InvalidToken("token is not base64url") from exc
        if len(raw) < 17 or raw[0] >> 6 != VERSION:
            raise InvalidToken("not a tracking token of this version")
        header, sealed = raw[:1], raw[1:]
        # The key whose id the header names first; on a (1 in 64) collision, the others too.
        keys = sorted(self._keys, key=lambda k: k.header != header)
        body = None
        for key in keys:
            try:
                body = key.ciphers[kind].decrypt(sealed, [header])
                break
            except InvalidTag:
                continue
        if body is None:
            raise InvalidToken("not sealed with a known secret, or of another kind")
        try:
            payload = _decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InvalidToken(f"bad payload: {exc}") from exc
        if kind == "click" and not payload.url:
            raise InvalidToken("click token without a url")
        if ttl is not None and payload.issued + ttl < (time.time() if now is None else now):
            raise ExpiredToken(f"issued {int(payload.issued)}, valid for {ttl:g} s")
        return payload


def _as_keys(keys: TrackingKeys | str | Sequence[str]) -> TrackingKeys:
    return keys if isinstance(keys, TrackingKeys) else TrackingKeys(keys)


def sign(keys: TrackingKeys | str | Sequence[str], kind: LinkKind, payload: LinkPayload) -> str:
    """Seal ``payload`` as a ``kind`` token with the first secret."""
    return _as_keys(keys).seal(kind, payload)


def verify(
    keys: TrackingKeys | str | Sequence[str],
    kind: LinkKind,
    token: str,
    *,
    ttl: float | None = None,
) -> LinkPayload:
    """Open a ``kind`` token with any of the secrets; ``InvalidToken`` otherwise."""
    return _as_keys(keys).open(kind, token, ttl=ttl)


def hit_id(kind: LinkKind, payload: LinkPayload) -> str:
    """The messageId of a hit's event: the same for every replay of one link of one delivery,
    so JetStream's window and ingest's dedupe let one event through."""
    parts = "\x1f".join((kind, payload.message.delivery_id, payload.url or ""))
    return f"tracking:{kind}:{hashlib.sha256(parts.encode()).hexdigest()[:32]}"


def open_url(base_url: str, keys: TrackingKeys | str, message: TrackedMessage) -> str:
    """The open-tracking pixel's URL for ``message``."""
    token = sign(keys, "open", LinkPayload(message=message))
    return f"{base_url.rstrip('/')}{OPEN_PATH}{token}.gif"


def click_url(base_url: str, keys: TrackingKeys | str, message: TrackedMessage, url: str) -> str:
    """A tracked link that redirects to ``url``."""
    token = sign(keys, "click", LinkPayload(message=message, url=url))
    return f"{base_url.rstrip('/')}{CLICK_PATH}{token}"


def unsubscribe_url(base_url: str, keys: TrackingKeys | str, message: TrackedMessage) -> str:
    """The ``List-Unsubscribe`` URL (send it with ``List-Unsubscribe-Post:
    List-Unsubscribe=One-Click``, RFC 8058)."""
    token = sign(keys, "unsubscribe", LinkPayload(message=message))
    return f"{base_url.rstrip('/')}{UNSUBSCRIBE_PATH}{token}"
