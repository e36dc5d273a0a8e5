"""Channel and Destination documents: how the dispatcher reaches each provider.

They are resources applied with ``cairn apply`` (``resources`` table, kinds ``Channel`` and
``Destination``); a delivery names one by ``channel`` or ``destination``. Fields may sit at the top
level or under ``spec:``::

    kind: Channel
    name: email
    type: smtp                      # smtp | twilio | fcm | webpush | webhook
    settings:
      host: smtp.example.com
      port: 587
      starttls: true
      username: mailer
      password: {env: SMTP_PASSWORD}  # secrets only by reference: {env: NAME} or {file: PATH}
      from: "Shop <shop@example.com>"
    marketing: true                 # consent + unsubscribe link (default true)
    frequency_cap: {limit: 3, per: 1d}
    quiet_hours: {start: "21:00", end: "08:00", timezone: UTC}   # profile's timezone trait wins

    kind: Destination
    name: braze
    type: braze                     # braze | customerio | iterable | function
    settings: {base_url: https://rest.iad-01.braze.com, api_key: {env: BRAZE_KEY}}
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import time, timedelta
from pathlib import Path
from typing import Any

import msgspec

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
    quiet_hours: QuietHours | None = None
    code: str | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"

    def setting(self, name: str, default: Any = None) -> Any:
        return self.settings.get(name, default)

    def require(self, name: str) -> Any:
        if name not in self.settings or self.settings[name] in (None, ""):
            raise DocumentError(f"{self.key}: settings.{name} is required for type {self.type}")
        return self.settings[name]

    def secret(self, name: str, *, required: bool = True) -> str | None:
        value = self.settings.get(name)
        if value is None:
            if required:
                raise DocumentError(f"{self.key}: settings.{name} is required for type {self.type}")
            return None
        return read_secret(value, f"{self.key}: settings.{name}")


def read_secret(ref: Any, where: str) -> str:
    """``{env: NAME}`` or ``{file: PATH}``; secrets are never written into documents."""
    if isinstance(ref, Mapping):
        if "env" in ref:
            value = os.environ.get(str(ref["env"]))
            if value is None:
                raise DocumentError(f"{where}: environment variable {ref['env']} is not set")
            return value
        if "file" in ref:
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


def target_from_document(kind: str, name: str, document: Mapping[str, Any]) -> Target:
    spec = document.get("spec")
    doc: Mapping[str, Any] = spec if isinstance(spec, Mapping) else document
    where = f"{kind}/{name}"
    kind_types = CHANNEL_TYPES if kind == "Channel" else DESTINATION_TYPES
    type_ = doc.get("type")
    if type_ not in kind_types:
        raise DocumentError(f"{where}: type must be one of {', '.join(sorted(kind_types))}")
    settings = doc.get("settings") or {}
    if not isinstance(settings, Mapping):
        raise DocumentError(f"{where}: settings must be a mapping")
    cap = doc.get("frequency_cap")
    quiet = doc.get("quiet_hours")
    return Target(
        kind=kind,
        name=name,
        type=str(type_),
        settings=dict(settings),
        marketing=bool(doc.get("marketing", True)),
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
        code=doc.get("code") if isinstance(doc.get("code"), str) else None,
    )
