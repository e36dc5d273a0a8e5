"""Consent and quiet hours: pure decisions on a profile's traits and the clock."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cairn_dispatcher.documents import QuietHours

_NO = (False, "unsubscribed", "opted_out", "opted-out", "no", "false")


def consent_refusal(traits: Mapping[str, Any], channel: str) -> str | None:
    """Why the profile's own traits forbid this channel, or None.

    Understood: ``unsubscribed: true`` (every marketing channel), ``subscriptions.<channel>`` or
    ``consent.<channel>`` false / "unsubscribed" / "opted_out", and Braze-style
    ``<channel>_subscribe: unsubscribed``.
    """
    if traits.get("unsubscribed") is True:
        return "profile unsubscribed"
    for group in ("subscriptions", "consent"):
        values = traits.get(group)
        if isinstance(values, Mapping) and values.get(channel) in _NO:
            return f"{group}.{channel} is {values.get(channel)!r}"
    flag = traits.get(f"{channel}_subscribe")
    if flag in _NO:
        return f"{channel}_subscribe is {flag!r}"
    return None


def _zone(name: Any, fallback: str) -> ZoneInfo:
    for candidate in (name, fallback, "UTC"):
        if isinstance(candidate, str) and candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def quiet_until(quiet: QuietHours, timezone: Any, now: datetime) -> datetime | None:
    """The end of the quiet period ``now`` falls in (in the profile's zone), or None."""
    zone = _zone(timezone, quiet.timezone)
    local = now.astimezone(zone)
    start, end = quiet.start, quiet.end
    t = local.time().replace(tzinfo=None)
    if start == end:
        return None
    if start < end:
        inside = start <= t < end
        end_day = local.date()
    else:  # wraps midnight, e.g. 21:00 → 08:00
        inside = t >= start or t < end
        end_day = local.date() + timedelta(days=1) if t >= start else local.date()
    if not inside:
        return None
    return datetime.combine(end_day, end, tzinfo=zone)
