"""Channel and Destination documents: how the dispatcher reaches each provider.

They are resources applied with ``cairn apply`` (``resources`` table, kinds ``Channel`` and
``Destination``); a delivery names one by ``channel`` or ``destination``. Fields may sit at the top
level or under ``spec:``::

    kind: Channel
    name: email
    type: email
    provider: smtp                  # smtp | twilio | fcm | webpush | webhook
    endpoint: smtp://smtp.example.com:587   # smtps:// for implicit TLS
    options:
      starttls: true
      username: mailer
      from: "Shop <shop@example.com>"
      marketing: true               # consent + unsubscribe link (default true)
      frequency_cap: {limit: 3, per: 1d}
      rate_limit: 500/min           # shared by every dispatcher replica; excess waits in order
      quiet_hours: {start: "21:00", end: "08:00", timezone: UTC}  # profile's timezone wins
    credentials:
      password: {env: SMTP_PASSWORD}  # secrets only by reference: {env: NAME} or {file: PATH}

    kind: Destination
    name: braze
    provider: braze                 # braze | customerio | iterable | webhook | function
    base_url: https://rest.iad-01.braze.com
    credentials: {api_key: {env: BRAZE_KEY}}

``options``, ``credentials``, ``base_url`` and ``endpoint`` are flattened into one settings
mapping (an older ``settings:`` mapping is read too). Provider settings by name:

- smtp: host, port, tls, starttls, username, password, from, validate_certs
- twilio: account_sid, auth_token, from or messaging_service_sid, status_callback, base_url
- fcm: project_id, access_token or service_account (JSON key), token_uri, base_url
- webpush: vapid_private_key (raw base64url), vapid_subject (mailto:...), ttl, urgency
- webhook: url (= endpoint), secret (``whsec_...``, Standard Webhooks), headers
- braze / iterable: api_key, base_url, event; customerio: site_id, api_key, base_url, event
- function: the ``function`` source, allowed_hosts (for ``fetch``), any settings the code reads

Every HTTP provider reaches public addresses only (``cairn_dispatcher.egress``): a webhook URL or
a push endpoint that resolves to loopback, link-local, private or reserved space is refused unless
``options.allow_networks`` lists its network, e.g. ``allow_networks: ["10.20.0.0/16"]``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from cairn_common.rates import RateError, RateLimit, parse_rate
from cairn_dispatcher.egress import PUBLIC, EgressPolicy
from cairn_journey.resource_reader import LINK_HOST

CHANNEL_TYPES = frozenset({"smtp", "twilio", "fcm", "webpush", "webhook"})
DESTINATION_TYPES = frozenset({"braze", "customerio", "iterable", "function", "webhook"})


class DocumentError(ValueError):
    """A Channel/Destination document that cannot be used, worded for the operator."""


class FrequencyCap(msgspec.Struct, frozen=True):
    limit: int
    per: timedelta


class QuietHours(msgspec.Struct, frozen=True):
    start: time
    end: time
    timezone: str = "UTC"


class Target(msgspec.Struct, frozen=True, kw_only=True):
    """A resolved Channel or Destination document."""

    kind: str  # "Channel" | "Destination"
    name: str
    type: str
    settings: dict[str, Any]
    marketing: bool = True
    frequency_cap: FrequencyCap | None = None
    rate_limit: RateLimit | None = None
    """``rate_limit: 500/min``: every send through this channel or destination shares one
    schedule across dispatcher replicas (``cairn_dispatcher.rates``)."""
    quiet_hours: QuietHours | None = None
    code: str | None = None
    egress: EgressPolicy = PUBLIC
    """The non-public networks this target's requests may reach (``allow_networks``)."""
    link_hosts: tuple[str, ...] = ()
    """Hosts (``shop.example``, ``*.shop.example``) whose links email tracking rewrites even
    when a template built them from data (``options.tracking.link_hosts``)."""

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"

    def setting(self, name: str, default: Any = None) -> Any:
        """A plain setting; ``{env: NAME}`` / ``{file: PATH}`` references are read."""
        value = self.settings.get(name, default)
        if is_secret_ref(value):
            return read_secret(value, f"{self.key}: {name}")
        return value

    def require(self, name: str) -> Any:
        value = self.setting(name)
        if value in (None, ""):
            raise DocumentError(f"{self.key}: {name} is required for provider {self.type}")
        return value

    def secret(self, name: str, *, required: bool = True) -> str | None:
        value = self.settings.get(name)
        if value is None:
            if required:
                raise DocumentError(f"{self.key}: settings.{name} is required for type {self.type}")
            return None
        return read_secret(value, f"{self.key}: {name}")


def is_secret_ref(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and set(value) <= {"env", "file"}
        and any(value.get(k) for k in ("env", "file"))
    )


def read_secret(ref: Any, where: str) -> str:
    """``{env: NAME}`` or ``{file: PATH}``; secrets are never written into documents."""
    if isinstance(ref, Mapping):
        if ref.get("env"):
            value = os.environ.get(str(ref["env"]))
            if value is None:
                raise DocumentError(f"{where}: environment variable {ref['env']} is not set")
            return value
        if ref.get("file"):
            try:
                return Path(str(ref["file"])).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise DocumentError(f"{where}: cannot read {ref['file']}: {exc}") from None
    raise DocumentError(f"{where}: give secrets by reference, {{env: NAME}} or {{file: PATH}}")


_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: Any, where: str) -> timedelta:
    if isinstance(text, int | float) and not isinstance(text, bool):
        return timedelta(seconds=float(text))
    match = _DURATION.match(str(text).strip())
    if not match:
        raise DocumentError(f"{where}: {text!r} is not a duration like 30s, 10m, 1d")
    return timedelta(seconds=int(match[1]) * _UNITS[match[2]])


def _parse_time(text: Any, where: str) -> time:
    try:
        return time.fromisoformat(str(text))
    except ValueError:
        raise DocumentError(f"{where}: {text!r} is not a time of day like 21:00") from None


DEFAULT_PROVIDER = {"email": "smtp", "sms": "twilio", "push": "fcm", "webhook": "webhook"}
_ALIASES = {"customer.io": "customerio", "customer_io": "customerio", "web_push": "webpush"}


def _settings(kind: str, provider: str, doc: Mapping[str, Any], where: str) -> dict[str, Any]:
    """One flat settings mapping from either document shape: ``options`` + ``credentials`` +
    ``base_url`` + ``endpoint`` (the journey library's), or ``settings`` (older)."""
    settings: dict[str, Any] = {}
    for part in ("settings", "options", "credentials"):
        value = doc.get(part) or {}
        if not isinstance(value, Mapping):
            raise DocumentError(f"{where}: {part} must be a mapping")
        settings.update(value)
    if doc.get("base_url"):
        settings["base_url"] = doc["base_url"]
    endpoint = doc.get("endpoint")
    if isinstance(endpoint, str) and endpoint:
        if provider == "smtp":
            parts = urlsplit(endpoint)
            if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
                raise DocumentError(
                    f"{where}: endpoint must be smtp://host:port or smtps://host:port"
                )
            settings.setdefault("host", parts.hostname)
            settings.setdefault("tls", parts.scheme == "smtps")
            if parts.port:
                settings.setdefault("port", parts.port)
            if parts.username:
                settings.setdefault("username", parts.username)
        elif provider in ("webhook", "function"):
            settings.setdefault("url", endpoint)
        else:
            settings.setdefault("base_url", endpoint)
    return settings


def _policy(doc: Mapping[str, Any], name: str) -> Any:
    options = doc.get("options")
    if name in doc:
        return doc[name]
    return options.get(name) if isinstance(options, Mapping) else None


def target_from_document(kind: str, name: str, document: Mapping[str, Any]) -> Target:
    spec = document.get("spec")
    doc: Mapping[str, Any] = spec if isinstance(spec, Mapping) else document
    where = f"{kind}/{name}"
    kind_types = CHANNEL_TYPES if kind == "Channel" else DESTINATION_TYPES
    provider = doc.get("provider") or doc.get("type")
    if kind == "Channel" and provider in DEFAULT_PROVIDER and provider not in kind_types:
        provider = DEFAULT_PROVIDER[str(provider)]
    if kind == "Channel" and provider is None:
        provider = DEFAULT_PROVIDER.get(name)
    provider = _ALIASES.get(str(provider).lower(), str(provider).lower())
    if provider not in kind_types:
        raise DocumentError(f"{where}: provider must be one of {', '.join(sorted(kind_types))}")
    cap = _policy(doc, "frequency_cap")
    rate = _policy(doc, "rate_limit")
    try:
        rate_limit = parse_rate(rate) if rate is not None else None
    except RateError as exc:
        raise DocumentError(f"{where}: rate_limit: {exc}") from None
    quiet = _policy(doc, "quiet_hours")
    marketing = _policy(doc, "marketing")
    code = doc.get("function") or doc.get("code")
    return Target(
        kind=kind,
        name=name,
        type=provider,
        settings=_settings(kind, provider, doc, where),
        marketing=True if marketing is None else bool(marketing),
        frequency_cap=(
            FrequencyCap(
                limit=int(cap["limit"]),
                per=parse_duration(cap.get("per", "1d"), f"{where}: frequency_cap.per"),
            )
            if isinstance(cap, Mapping)
            else None
        ),
        quiet_hours=(
            QuietHours(
                start=_parse_time(quiet.get("start"), f"{where}: quiet_hours.start"),
                end=_parse_time(quiet.get("end"), f"{where}: quiet_hours.end"),
                timezone=str(quiet.get("timezone", "UTC")),
            )
            if isinstance(quiet, Mapping)
            else None
        ),
        rate_limit=rate_limit,
        code=code if isinstance(code, str) else None,
        egress=_egress(_policy(doc, "allow_networks"), where),
        link_hosts=_link_hosts(_policy(doc, "tracking"), where),
    )


def _link_hosts(value: Any, where: str) -> tuple[str, ...]:
    """``tracking: {link_hosts: [host, "*.suffix", ...]}``."""
    hosts = value.get("link_hosts") if isinstance(value, Mapping) else None
    if hosts is None:
        return ()
    if not isinstance(hosts, list | tuple) or not all(
        isinstance(h, str) and LINK_HOST.fullmatch(h) for h in hosts
    ):
        raise DocumentError(
            f"{where}: tracking.link_hosts must be a list of hosts like shop.example or "
            "*.shop.example"
        )
    return tuple(h.lower() for h in hosts)


def _egress(value: Any, where: str) -> EgressPolicy:
    """``allow_networks: [CIDR, ...]``: the non-public networks the target may reach."""
    if value is None:
        return PUBLIC
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise DocumentError(f"{where}: allow_networks must be a list of networks like 10.0.0.0/8")
    try:
        return EgressPolicy(allow_networks=tuple(value))
    except ValueError as exc:
        raise DocumentError(f"{where}: {exc}") from None
