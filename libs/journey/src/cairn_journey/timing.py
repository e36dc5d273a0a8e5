"""When a ``wait`` step ends: after a duration, at a time of day in the profile's time zone, or
at a date taken from a property (plus an offset)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cairn_journey.conditions import MISSING, Scope, resolve
from cairn_journey.model import WEEKDAYS, Wait
from cairn_journey.reader import parse_instant


@functools.lru_cache(maxsize=512)
def _zone(name: str) -> tzinfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def profile_zone(traits: Mapping[str, Any]) -> tzinfo:
    """The profile's ``timezone`` trait (IANA name); UTC when absent or unknown."""
    name = traits.get("timezone")
    if isinstance(name, str) and name:
        zone = _zone(name)
        if zone is not None:
            return zone
    return UTC


def next_time_of_day(
    hhmm: str, zone: tzinfo, now: datetime, days: tuple[str, ...] = ()
) -> datetime:
    """The next instant strictly after ``now`` when the wall clock in ``zone`` reads ``hhmm``
    (on one of ``days``, ``mon``..``sun``, when given)."""
    hour, minute = (int(part) for part in hhmm.split(":"))
    local = now.astimezone(zone)
    day = local.date()
    for offset in range(9):
        date = day + timedelta(days=offset)
        if days and WEEKDAYS[date.weekday()] not in days:
            continue
        candidate = datetime.combine(date, time(hour, minute), zone)
        # A wall time skipped by a DST jump lands an hour later, which is what a person expects.
        result = candidate.astimezone(UTC)
        if result > now:
            return result
    raise AssertionError("unreachable: a weekday's time of day recurs within eight days")


def wait_until(
    wait: Wait, scope: Scope, traits: Mapping[str, Any], now: datetime
) -> datetime | None:
    """When the wait ends; ``None`` (continue at once) when a date property is missing."""
    if wait.duration is not None:
        return now + wait.duration
    if wait.until_time is not None:
        return next_time_of_day(wait.until_time, profile_zone(traits), now, wait.on)
    if wait.until is not None:
        value = resolve(wait.until, scope)
        if value is MISSING:
            return None
        instant = _instant(value)
        if instant is None:
            return None
        return instant + (wait.offset or timedelta(0))
    return None


def _instant(value: Any) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)  # epoch seconds
        except (OverflowError, OSError, ValueError):
            return None
    return parse_instant(value)
