"""Journey analytics from the matcher's exact counters (``journey_stats``, migration 0004).

The matcher commits each increment with the input that caused it: the interpreter's counters
(entered, reached, matched, ...) and, per send step, each delivery's outcomes and its unique opens
and clicks (``delivery:<kind>``, counted once per delivery and kind through the key of
``delivery_events``, migration 0006), so these figures are exact under redelivery and crashes,
and reading them never scans per-instance rows. This module only reads and arranges them: totals,
a per-step funnel in the journey's step order with each send step's outcomes, conversion against
the goal's target, and a per-day or per-hour series.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import msgspec

from cairn_control.errors import NotFound
from cairn_control.preview import steps_in
from cairn_journey.documents import DocumentError, parse_document
from cairn_journey.durations import format_duration
from cairn_journey.experiments import figures, two_proportion_p, waiting_for
from cairn_journey.journey_reader import STEP_KINDS
from cairn_journey.model import Journey, SplitStep
from cairn_journey.validate import walk_steps

Period = Literal["day", "hour"]
SERIES_COUNTERS = ("entered", "completed", "converted")
SERIES_DELIVERIES = ("sent", "opened", "clicked")
DELIVERY = "delivery:"
"""Counter prefix of delivery outcomes, opens and clicks (``delivery:sent``...): the matcher
counts each (delivery, kind) once, when it first records it in ``delivery_events``."""
HOLDOUT = "holdout:"
"""Counter prefix of what holdout instances did (``holdout:entered``, ``holdout:converted``)."""
PATH_COUNTERS = ("sends:", "converted:")
"""A split step's per-path counters shown in its ``paths`` (``split:<path>`` stays a counter)."""
REASON = "reason:"
"""Counter prefix of reasons: ``reason:skipped:<reason>`` for skipped, suppressed, dropped."""
HELD_MS = "rate_limit:held_ms"
"""Milliseconds rate limits held a step's sent deliveries back (``delivery:rate_limited`` of
them)."""


class SendStats(msgspec.Struct, frozen=True, kw_only=True):
    """What became of a send step's deliveries. Each delivery counts once per outcome it reached
    (a deferred delivery sent later counts in both), opens and clicks once per delivery."""

    requested: int
    """Delivery requests the step emitted (the matcher's ``send_requested``)."""
    sent: int = 0
    failed: int = 0
    bounced: int = 0
    skipped: int = 0
    """Not sent by choice: no address (in the matcher or the dispatcher), a frequency cap..."""
    suppressed: int = 0
    deferred: int = 0
    dropped: int = 0
    dead_lettered: int = 0
    opened: int = 0
    clicked: int = 0
    unsubscribed: int = 0
    rate_limited: int = 0
    """Sent after a rate limit held them back (each also counts as deferred)."""
    rate_limit_delay_seconds: float | None = None
    """How long a rate limit held those back, on average."""
    open_rate: float | None = None
    """Percent of sent deliveries opened at least once."""
    click_rate: float | None = None
    """Percent of sent deliveries with at least one click."""
    reasons: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    """outcome -> reason -> count, for skipped, suppressed and dropped."""


class PathStats(msgspec.Struct, frozen=True, kw_only=True):
    """One path of a split: its instances, the sends they requested after taking it, and their
    goal conversions."""

    name: str
    percent: float
    entered: int
    sends: int
    converted: int
    conversion_rate: float | None
    """Percent of the path's entries that converted."""
    p_value: float | None = None
    """For every path after the first: a two-sided two-proportion z-test of its conversion
    against the first path's (small: the difference is unlikely to be chance)."""
    winner: bool = False


class WinnerStats(msgspec.Struct, frozen=True, kw_only=True):
    """A split's winner selection: the rule, and the decision once it is made."""

    rule: str
    """As written: ``after 7d, sample 1000``."""
    path: str | None = None
    """The winning path, once decided."""
    decided_at: datetime | None = None
    reason: str | None = None
    figures: list[dict[str, Any]] = msgspec.field(default_factory=list)
    """Per path, what the decision saw."""
    waiting_for: list[str] = msgspec.field(default_factory=list)
    """Until decided: the conditions that do not hold yet."""


class StepStats(msgspec.Struct, frozen=True, kw_only=True):
    step_id: str
    kind: str
    counters: dict[str, int]
    sends: SendStats | None = None
    """For a send step: its deliveries by outcome, opens and clicks."""
    paths: list[PathStats] | None = None
    """For a split step: its figures per path (an experiment)."""
    winner: WinnerStats | None = None


class HoldoutStats(msgspec.Struct, frozen=True, kw_only=True):
    """The journey's control group against the profiles that got the journey."""

    percent: float | None
    """The holdout share of the version shown."""
    entered: int
    converted: int
    conversion_rate: float | None
    treated_entered: int
    treated_converted: int
    treated_rate: float | None
    lift: float | None
    """Treated minus holdout conversion, in percentage points."""
    relative_lift: float | None
    """The lift in percent of the holdout's conversion."""
    p_value: float | None
    """Two-sided two-proportion z-test of the two conversions."""


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
    holdout: HoldoutStats | None = None
    """With a holdout (or holdout figures): the control group's conversion and the lift. The
    other figures are of the profiles that got the journey."""
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
        stored = await conn.fetchrow(
            "SELECT definition, published_at FROM journey_versions "
            "WHERE journey = $1 AND version = $2",
            name,
            shown,
        )
        if version is not None and stored is None:
            raise NotFound(f"journey {name!r} has no version {version}")
        definition: dict[str, Any] = json.loads(stored["definition"]) if stored else {}
        decisions = await _decisions(conn, name, shown)
        rows = await conn.fetch(
            "SELECT step_id, counter, sum(n)::bigint AS n FROM journey_stats "
            "WHERE journey = $1 AND ($2::int IS NULL OR version = $2) GROUP BY step_id, counter",
            name,
            version,
        )
        series = await conn.fetch(
            "SELECT date_trunc($3, hour) AS period, counter, sum(n)::bigint AS n "
            "FROM journey_stats WHERE journey = $1 AND ($2::int IS NULL OR version = $2) "
            "AND ((step_id = '' AND counter = ANY($4::text[])) OR counter = ANY($5::text[])) "
            "GROUP BY 1, 2 ORDER BY 1",
            name,
            version,
            by,
            list(SERIES_COUNTERS),
            [DELIVERY + k for k in SERIES_DELIVERIES],
        )
        active = await _active(conn, name, version)
    published = stored["published_at"] if stored else None
    arranged = _arrange(name, version, definition, rows, series, active, by)
    return _with_experiments(arranged, definition, decisions, published)


async def _decisions(
    conn: asyncpg.Connection, name: str, version: int | None
) -> dict[str, asyncpg.Record]:
    try:
        rows = await conn.fetch(
            "SELECT step_id, path_name, reason, figures::text AS figures, decided_at "
            "FROM split_decisions WHERE journey = $1 AND version = $2",
            name,
            version,
        )
    except asyncpg.UndefinedTableError:
        return {}
    return {r["step_id"]: r for r in rows}


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


def _sends(counters: dict[str, int], delivery: dict[str, int]) -> SendStats:
    by_kind: dict[str, int] = {}
    reasons: dict[str, dict[str, int]] = {}
    held_ms = delivery.pop(HELD_MS, 0)
    for key, n in delivery.items():
        if key.startswith(DELIVERY):
            by_kind[key.removeprefix(DELIVERY)] = n
        else:
            outcome, _, reason = key.removeprefix(REASON).partition(":")
            reasons.setdefault(outcome, {})[reason] = n
    no_address = counters.get("skipped:no_address", 0)
    if no_address:  # skipped by the matcher: the profile had no address, nothing was requested
        by_kind["skipped"] = by_kind.get("skipped", 0) + no_address
        per = reasons.setdefault("skipped", {})
        per["no address"] = per.get("no address", 0) + no_address
    sent = by_kind.get("sent", 0)

    def rate(n: int) -> float | None:
        return round(100.0 * n / sent, 2) if sent else None

    fields = {f for f in SendStats.__struct_fields__ if f not in ("requested", "reasons")}
    limited = by_kind.get("rate_limited", 0)
    return SendStats(
        requested=counters.get("send_requested", 0),
        **{k: v for k, v in by_kind.items() if k in fields},
        open_rate=rate(by_kind.get("opened", 0)),
        click_rate=rate(by_kind.get("clicked", 0)),
        rate_limit_delay_seconds=round(held_ms / limited / 1000, 3) if limited else None,
        reasons=reasons,
    )


def _percent(target: Any) -> float | None:
    """The goal's target as published (a number) or as written (``"50%"``)."""
    if isinstance(target, str) and target.strip().endswith("%"):
        try:
            return float(target.strip()[:-1])
        except ValueError:
            return None
    return float(target) if isinstance(target, int | float) else None


def _rate(converted: int, entered: int) -> float | None:
    return round(100.0 * converted / entered, 2) if entered else None


def _with_experiments(
    stats: JourneyStats,
    definition: dict[str, Any],
    decisions: dict[str, asyncpg.Record],
    published: datetime | None,
) -> JourneyStats:
    """Add the holdout's lift and each split's figures per path (from the version shown)."""
    try:
        journey = parse_document({"kind": "Journey", **definition}) if definition else None
    except DocumentError:
        journey = None
    holdout = _holdout(stats, journey.holdout if isinstance(journey, Journey) else None)
    if not isinstance(journey, Journey):
        return msgspec.structs.replace(stats, holdout=holdout)
    splits = {step.id: step for _, step in walk_steps(journey.steps) if isinstance(step, SplitStep)}
    steps = []
    for step_stats in stats.steps:
        split = splits.get(step_stats.step_id)
        if split is not None:
            step_stats = _experiment(
                step_stats, split, decisions.get(split.id), published or datetime.now(UTC)
            )
        steps.append(step_stats)
    return msgspec.structs.replace(stats, holdout=holdout, steps=steps)


def _holdout(stats: JourneyStats, percent: float | None) -> HoldoutStats | None:
    counters = stats.journey_counters
    entered = counters.get(HOLDOUT + "entered", 0)
    if percent is None and not entered:
        return None
    converted = counters.get(HOLDOUT + "converted", 0)
    rate, treated = _rate(converted, entered), _rate(stats.converted, stats.entered)
    lift = round(treated - rate, 2) if rate is not None and treated is not None else None
    return HoldoutStats(
        percent=percent,
        entered=entered,
        converted=converted,
        conversion_rate=rate,
        treated_entered=stats.entered,
        treated_converted=stats.converted,
        treated_rate=treated,
        lift=lift,
        relative_lift=round(100.0 * lift / rate, 2) if lift is not None and rate else None,
        p_value=_rounded(two_proportion_p(stats.converted, stats.entered, converted, entered)),
    )


def _experiment(
    step_stats: StepStats, split: SplitStep, decision: asyncpg.Record | None, published: datetime
) -> StepStats:
    counters = step_stats.counters
    paths = figures(split, counters)
    won = decision["path_name"] if decision is not None else None
    first = paths[0]
    rows = [
        PathStats(
            name=f.name,
            percent=f.percent,
            entered=f.entered,
            sends=f.sends,
            converted=f.converted,
            conversion_rate=_rate(f.converted, f.entered),
            p_value=None
            if i == 0
            else _rounded(two_proportion_p(f.converted, f.entered, first.converted, first.entered)),
            winner=f.name == won,
        )
        for i, f in enumerate(paths)
    ]
    winner: WinnerStats | None = None
    if split.winner is not None:
        rule = split.winner
        written = ", ".join(
            part
            for part in (
                f"after {format_duration(rule.after)}" if rule.after is not None else "",
                f"sample {rule.sample}" if rule.sample is not None else "",
            )
            if part
        )
        if decision is not None:
            winner = WinnerStats(
                rule=written,
                path=won,
                decided_at=decision["decided_at"],
                reason=decision["reason"],
                figures=json.loads(decision["figures"]),
            )
        else:
            waits = waiting_for(split, counters, published, datetime.now(UTC))
            winner = WinnerStats(rule=written, waiting_for=waits)
    shown = {k: v for k, v in counters.items() if not k.startswith(PATH_COUNTERS)}
    return msgspec.structs.replace(step_stats, counters=shown, paths=rows, winner=winner)


def _rounded(p: float | None) -> float | None:
    return round(p, 4) if p is not None else None


def _step_kind(step: dict[str, Any]) -> str:
    return next(k for k in STEP_KINDS if k in step)


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

    def step(step_id: str, kind: str) -> StepStats:
        counters = per_step.pop(step_id, {})
        delivery = {
            k: v for k, v in counters.items() if k.startswith((DELIVERY, REASON)) or k == HELD_MS
        }
        for k in delivery:
            del counters[k]
        sends = _sends(counters, delivery) if kind == "send" or delivery else None
        return StepStats(step_id=step_id, kind=kind, counters=counters, sends=sends)

    steps = [step(s["id"], _step_kind(s)) for s in steps_in(definition.get("steps", []))]
    # Steps of other versions that the version shown does not have, after its own.
    steps += [step(k, "") for k in sorted(per_step)]
    points: dict[datetime, dict[str, int]] = {}
    for r in series:
        counter = r["counter"].removeprefix(DELIVERY)
        point = points.setdefault(r["period"], {})
        point[counter] = point.get(counter, 0) + int(r["n"])
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
        goal_target=_percent(target),
        journey_counters=journey_counters,
        steps=steps,
        series=[SeriesPoint(period=p, counters=c) for p, c in sorted(points.items())],
        by=by,
    )
