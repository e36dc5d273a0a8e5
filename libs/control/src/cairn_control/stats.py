"""Journey analytics from the matcher's exact counters (``journey_stats``, migration 0004).

The matcher commits each increment with the input that caused it, so these figures are exact
under redelivery and crashes. This module only reads and arranges them: totals, a per-step funnel
in the journey's step order, conversion against the goal's target, and a per-day or per-hour
series.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

import asyncpg
import msgspec

from cairn_control.errors import NotFound
from cairn_control.preview import steps_in

Period = Literal["day", "hour"]
SERIES_COUNTERS = ("entered", "completed", "converted")


class StepStats(msgspec.Struct, frozen=True, kw_only=True):
    step_id: str
    kind: str
    counters: dict[str, int]


class SeriesPoint(msgspec.Struct, frozen=True, kw_only=True):
    period: datetime
    counters: dict[str, int]


class JourneyStats(msgspec.Struct, frozen=True, kw_only=True):
    journey: str
    version: int | None
    """``None``: every version added together."""
    entered: int
    active: int | None
    """Instances running now (``None`` when the matcher's table is not there yet)."""
    completed: int
    converted: int
    exited: dict[str, int]
    """Exits by reason: the exit event's name, ``stopped``, ``lifetime``..."""
    conversion_rate: float | None
    """Percent of entered instances that converted."""
    goal_target: float | None
    """The goal's target share in percent, from the version shown (or the live one)."""
    journey_counters: dict[str, int]
    """Every journey-level counter, including entry refusals (``skipped:repeat_once``, ...)."""
    steps: list[StepStats]
    series: list[SeriesPoint]
    by: Period


async def journey_stats(
    pool: asyncpg.Pool, name: str, *, version: int | None = None, by: Period = "day"
) -> JourneyStats:
    async with pool.acquire() as conn:
        journey = await conn.fetchrow(
            "SELECT live_version, (SELECT max(version) FROM journey_versions v "
            "WHERE v.journey = j.name) AS latest FROM journeys j WHERE name = $1",
            name,
        )
        if journey is None:
            raise NotFound(f"journey {name!r} does not exist")
        shown = version or journey["live_version"] or journey["latest"]
        raw = await conn.fetchval(
            "SELECT definition FROM journey_versions WHERE journey = $1 AND version = $2",
            name,
            shown,
        )
        if version is not None and raw is None:
            raise NotFound(f"journey {name!r} has no version {version}")
        definition: dict[str, Any] = json.loads(raw) if raw is not None else {}
        rows = await conn.fetch(
            "SELECT step_id, counter, sum(n)::bigint AS n FROM journey_stats "
            "WHERE journey = $1 AND ($2::int IS NULL OR version = $2) GROUP BY step_id, counter",
            name,
            version,
        )
        series = await conn.fetch(
            "SELECT date_trunc($3, hour) AS period, counter, sum(n)::bigint AS n "
            "FROM journey_stats WHERE journey = $1 AND ($2::int IS NULL OR version = $2) "
            "AND step_id = '' AND counter = ANY($4::text[]) GROUP BY 1, 2 ORDER BY 1",
            name,
            version,
            by,
            list(SERIES_COUNTERS),
        )
        active = await _active(conn, name, version)
    return _arrange(name, version, definition, rows, series, active, by)


async def _active(conn: asyncpg.Connection, name: str, version: int | None) -> int | None:
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM journey_instances WHERE journey = $1 AND status = 'active' "
            "AND ($2::int IS NULL OR version = $2)",
            name,
            version,
        )
    except asyncpg.UndefinedTableError:
        return None
    return count


def _step_kind(step: dict[str, Any]) -> str:
    return next(k for k in ("send", "wait_for", "wait", "branch", "split") if k in step)


def _arrange(
    name: str,
    version: int | None,
    definition: dict[str, Any],
    rows: list[asyncpg.Record],
    series: list[asyncpg.Record],
    active: int | None,
    by: Period,
) -> JourneyStats:
    journey_counters: dict[str, int] = {}
    per_step: dict[str, dict[str, int]] = {}
    for r in rows:
        bucket = journey_counters if r["step_id"] == "" else per_step.setdefault(r["step_id"], {})
        bucket[r["counter"]] = int(r["n"])
    steps = [
        StepStats(step_id=s["id"], kind=_step_kind(s), counters=per_step.pop(s["id"], {}))
        for s in steps_in(definition.get("steps", []))
    ]
    # Steps of other versions that the version shown does not have, after its own.
    steps += [StepStats(step_id=k, kind="", counters=v) for k, v in sorted(per_step.items())]
    points: dict[datetime, dict[str, int]] = {}
    for r in series:
        points.setdefault(r["period"], {})[r["counter"]] = int(r["n"])
    entered = journey_counters.get("entered", 0)
    converted = journey_counters.get("converted", 0)
    goal: dict[str, Any] = definition.get("goal") or {}
    target = goal.get("target")
    return JourneyStats(
        journey=name,
        version=version,
        entered=entered,
        active=active,
        completed=journey_counters.get("completed", 0),
        converted=converted,
        exited={
            k.split(":", 1)[1]: v for k, v in journey_counters.items() if k.startswith("exited:")
        },
        conversion_rate=round(100.0 * converted / entered, 2) if entered else None,
        goal_target=float(target) if isinstance(target, int | float) else None,
        journey_counters=journey_counters,
        steps=steps,
        series=[SeriesPoint(period=p, counters=c) for p, c in sorted(points.items())],
        by=by,
    )
