"""Send-rate limits (``rate_limit: 500/min``): the value a journey or a channel declares, and
the schedule the dispatchers share.

A limit is ``<count>/<period>``: the period a unit (``s``, ``sec``, ``second``, ``min``,
``minute``, ``h``, ``hour``, ``d``, ``day``) or a length in one unit (``10m``, ``2h``). It is
held as a steady rate (one send per ``spacing`` seconds) with a burst of one second's worth or a
tenth of the limit, whichever is less (at least one send), like a token bucket that refills
continuously: ``500/min`` lets 8 go at once, then one every 0.12 s; ``1000/s`` lets 100 go at
once. So no period ever carries more than the limit plus a tenth. Excess sends are never
dropped: each is given the next free slot of the schedule, in the order the dispatchers reach
them, and waits for it (see ``cairn_dispatcher.rates``).
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

import msgspec

MAX_COUNT = 1_000_000
_RATE = re.compile(r"\s*([0-9]+)\s*(?:/|per\s+)\s*([0-9A-Za-z]+)\s*")
_PERIOD = re.compile(r"([0-9]+)(s|m|min|h|d)")
_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hour": 3600.0,
    "d": 86400.0, "day": 86400.0,
}  # fmt: skip


class RateError(ValueError):
    """A rate limit that does not read; the message names what is wrong."""


class RateLimit(msgspec.Struct, frozen=True, array_like=True):
    """``count`` sends per ``per_seconds``."""

    count: int
    per_seconds: float

    @property
    def spacing(self) -> float:
        """Seconds between two sends at the steady rate."""
        return self.per_seconds / self.count

    @property
    def burst(self) -> int:
        """Sends that may go at once after a quiet spell: one second's worth or a tenth of the
        limit, whichever is less; at least one."""
        return max(1, min(math.floor(self.count / self.per_seconds), self.count // 10))

    @property
    def tolerance(self) -> float:
        """How far behind ``now`` an idle schedule may start, in seconds (the burst)."""
        return self.spacing * (self.burst - 1)

    def __str__(self) -> str:
        for unit in ("s", "min", "h", "d"):
            if self.per_seconds == _UNITS[unit]:
                return f"{self.count}/{unit}"
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if self.per_seconds % size == 0:
                return f"{self.count}/{int(self.per_seconds // size)}{unit}"
        return f"{self.count}/{int(self.per_seconds)}s"


def parse_rate(value: object) -> RateLimit:
    """``500/min`` -> ``RateLimit(500, 60.0)``; :class:`RateError` names what is wrong."""
    if not isinstance(value, str) or not (m := _RATE.fullmatch(value)):
        raise RateError(f"{value!r} is not a rate; write it as <count>/<period>, e.g. 500/min")
    count, period = int(m.group(1)), m.group(2)
    seconds = _UNITS.get(period.lower())
    if seconds is None:
        if not (p := _PERIOD.fullmatch(period.lower())):
            raise RateError(f"{period!r} is not a period (s, min, h, d, or a length such as 10m)")
        unit = {"m": "min"}.get(p.group(2), p.group(2))
        seconds = int(p.group(1)) * _UNITS[unit]
    if not 1 <= count <= MAX_COUNT:
        raise RateError(f"{count} sends is outside 1..{MAX_COUNT}")
    if not 1 <= seconds <= timedelta(days=7).total_seconds():
        raise RateError(f"a period of {period!r} is outside 1 s .. 7 d")
    return RateLimit(count, seconds)
