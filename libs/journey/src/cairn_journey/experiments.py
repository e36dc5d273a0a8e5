"""Reading an experiment: a split's figures per path, and when and how its winner is chosen.

The interpreter counts, on the split step, each path's entries (``split:<path>``), the sends
its instances requested after taking it (``sends:<path>``) and their goal conversions
(``converted:<path>``); a holdout instance's counters are prefixed ``holdout:`` and take no
part. These functions are pure, so the matcher (which records a decision) and the control plane
(which shows one, or what it still waits for) read the same figures the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta

import msgspec

from cairn_journey.durations import format_duration
from cairn_journey.model import SplitStep


class PathFigures(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    percent: float
    entered: int
    sends: int
    converted: int

    @property
    def rate(self) -> float | None:
        """Goal conversion in percent of the path's entries."""
        return 100.0 * self.converted / self.entered if self.entered else None


def figures(step: SplitStep, counters: Mapping[str, int]) -> list[PathFigures]:
    """Per path, from the split step's counters."""
    return [
        PathFigures(
            name=(name := step.path_name(i)),
            percent=path.percent,
            entered=counters.get(f"split:{name}", 0),
            sends=counters.get(f"sends:{name}", 0),
            converted=counters.get(f"converted:{name}", 0),
        )
        for i, path in enumerate(step.split)
    ]


def waiting_for(
    step: SplitStep, counters: Mapping[str, int], published_at: datetime, now: datetime
) -> list[str]:
    """What a winner selection still waits for (empty: it can decide now)."""
    rule = step.winner
    if rule is None:
        return ["no winner selection"]
    waits: list[str] = []
    if rule.after is not None and now < published_at + rule.after:
        left = published_at + rule.after - now
        left = timedelta(seconds=max(1, int(left.total_seconds())))
        waits.append(
            f"{format_duration(rule.after)} after publishing ({format_duration(left)} to go)"
        )
    sampled = sum(f.entered for f in figures(step, counters))
    if rule.sample is not None and sampled < rule.sample:
        waits.append(f"a sample of {rule.sample} ({sampled} so far)")
    return waits


def choose(step: SplitStep, counters: Mapping[str, int]) -> tuple[int, str]:
    """The winning path (index) by goal conversion, and why, in words. Ties go to the path
    written first; with no conversion at all the first path wins and the reason says so."""
    paths = figures(step, counters)
    rates = [f.rate or 0.0 for f in paths]
    best = max(range(len(paths)), key=lambda i: (rates[i], -i))
    listed = ", ".join(
        f"{f.name} {f.converted}/{f.entered} ({rates[i]:.1f}%)" for i, f in enumerate(paths)
    )
    if not any(f.converted for f in paths):
        return best, f"no path converted yet ({listed}); the first path is kept"
    return best, f"best goal conversion: {listed}"


def two_proportion_p(
    converted_a: int, entered_a: int, converted_b: int, entered_b: int
) -> float | None:
    """Two-sided p-value of a two-proportion z-test (``None`` without enough data): how likely a
    difference at least this large is when both groups convert alike."""
    if entered_a < 1 or entered_b < 1:
        return None
    pooled = (converted_a + converted_b) / (entered_a + entered_b)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / entered_a + 1 / entered_b))
    if spread == 0:
        return None
    z = (converted_a / entered_a - converted_b / entered_b) / spread
    return math.erfc(abs(z) / math.sqrt(2))
