"""Deciding split experiments: once a ``winner`` rule's conditions hold, record the winner.

The replica holding partition 0 looks every ``winners_seconds``: for each live journey's split
with a ``winner`` rule and no decision yet, it reads the split's counters and, when the rule's
``after`` and ``sample`` both hold, records the path with the best goal conversion in
``split_decisions`` (once: a decision is never revised) and notifies ``cairn_journeys``, so every
replica's catalogue sends later entries down the winning path.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import msgspec
import structlog
from prometheus_client import Counter

from cairn_common.failures import describe, is_transient
from cairn_common.waiting import wait_any
from cairn_journey.experiments import choose, figures, waiting_for
from cairn_journey.model import SplitStep
from cairn_matcher import repo
from cairn_matcher.journeys import JourneyCatalogue
from cairn_matcher.leases import PartitionLeases

log = structlog.get_logger(__name__)

DECIDED = Counter(
    "cairn_matcher_split_winners_total", "Split experiments whose winner was recorded"
)


async def decide_winners(
    pool: asyncpg.Pool, journeys: JourneyCatalogue, now: datetime | None = None
) -> list[tuple[str, int, str, str]]:
    """Record every winner that is due; the decisions made (journey, version, step, path)."""
    now = now or datetime.now(UTC)
    made: list[tuple[str, int, str, str]] = []
    for compiled in journeys.current.live.values():
        published = journeys.published.get((compiled.name, compiled.version))
        if published is None:
            continue
        for step in compiled.steps.values():
            if not isinstance(step, SplitStep) or step.winner is None:
                continue
            if step.id in compiled.winners:
                continue
            async with pool.acquire() as conn:
                counters = await repo.split_counters(conn, compiled.name, compiled.version, step.id)
                if waiting_for(step, counters, published, now):
                    continue
                index, reason = choose(step, counters)
                name = compiled.path_name(step.id, index)
                recorded = await repo.record_winner(
                    conn,
                    journey=compiled.name,
                    version=compiled.version,
                    step_id=step.id,
                    path=index,
                    path_name=name,
                    reason=reason,
                    figures=[msgspec.to_builtins(f) for f in figures(step, counters)],
                )
            if recorded:
                DECIDED.inc()
                log.info(
                    "split winner recorded",
                    journey=compiled.name,
                    version=compiled.version,
                    step=step.id,
                    path=name,
                    reason=reason,
                )
                made.append((compiled.name, compiled.version, step.id, name))
    return made


async def decide_regularly(
    pool: asyncpg.Pool,
    leases: PartitionLeases,
    journeys: JourneyCatalogue,
    stop: asyncio.Event,
    *,
    interval: float,
) -> None:
    while not stop.is_set():
        if 0 in leases.held:
            try:
                await decide_winners(pool, journeys)
            except Exception as exc:  # an experiment must never take the matcher down
                if is_transient(exc):
                    log.warning("cannot decide split winners", error=describe(exc))
                else:
                    log.exception("deciding split winners failed")
        await wait_any(stop, timeout=interval)
