"""Durations as people write them: ``30s``, ``10m``, ``2h``, ``1d``, ``1w``, combinations such as
``1h30m``, or ISO-8601 ``P1DT2H`` / ``PT90M`` / ``P2W``. A leading ``-`` makes it negative (used by
``offset``). Years and months are refused: their length varies.
"""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_SHORT = re.compile(r"(\d+(?:\.\d+)?)(w|d|h|m|s)")
_SHORT_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:w|d|h|m|s))+")
_ISO = re.compile(
    r"P(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?"
)


class DurationError(ValueError):
    """The text is not a duration; ``str()`` names the text."""


def parse_duration(text: str) -> timedelta:
    """Parse a duration; raises :class:`DurationError` (``"1x" is not a duration``)."""
    if not isinstance(text, str):
        raise DurationError(f"{text!r} is not a duration")
    raw = text.strip()
    sign = 1
    body = raw
    if body.startswith("-"):
        sign, body = -1, body[1:].strip()
    elif body.startswith("+"):
        body = body[1:].strip()
    seconds = _short(body) if body[:1] != "P" else _iso(body)
    if seconds is None:
        raise DurationError(f'"{text}" is not a duration')
    return timedelta(seconds=sign * seconds)


def _short(body: str) -> float | None:
    lowered = body.lower().replace(" ", "")
    if not lowered or not _SHORT_WHOLE.fullmatch(lowered):
        return None
    return sum(float(n) * _UNITS[u] for n, u in _SHORT.findall(lowered))


def _iso(body: str) -> float | None:
    match = _ISO.fullmatch(body.upper())
    if match is None or body.upper() in ("P", "PT") or body.upper().endswith("T"):
        return None
    return sum(float(v) * _UNITS[k] for k, v in match.groupdict().items() if v is not None)


def format_duration(value: timedelta) -> str:
    """The shortest ``1d2h`` form of a duration (``0s`` for zero)."""
    total = int(value.total_seconds())
    sign = "-" if total < 0 else ""
    total = abs(total)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return sign + ("".join(parts) or "0s")
