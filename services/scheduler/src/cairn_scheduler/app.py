"""The scheduler's lifecycle: fire timers on time until told to stop, then hand back the claims
of timers it holds but has not fired, so another replica fires them without waiting."""

from __future__ import annotations

import asyncio

import structlog

from cairn_common.failures import describe, is_transient
from cairn_common.runtime import ServiceContext
from cairn_common.waiting import wait_any
from cairn_scheduler import repo
from cairn_scheduler.lookahead import Lookahead
from cairn_scheduler.metrics import TIMERS_PENDING
from cairn_scheduler.settings import Settings

log = structlog.get_logger(__name__)


async def run(ctx: ServiceContext[Settings]) -> None:
    lookahead = Lookahead(ctx.pool, ctx.js, ctx.topology, ctx.settings)
    ctx.started.set()
    log.info("firing timers", lookahead_seconds=ctx.settings.lookahead_seconds)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(lookahead.run(ctx.stopping), name="lookahead")
        tg.create_task(_gauge_pending(ctx), name="pending-gauge")


async def _gauge_pending(ctx: ServiceContext[Settings]) -> None:
    while not ctx.stopping.is_set():
        try:
            async with ctx.pool.acquire() as conn:
                TIMERS_PENDING.set(await repo.count_pending(conn))
        except Exception as exc:  # a gauge must never take the scheduler down
            if is_transient(exc):
                log.warning("cannot count pending timers", error=describe(exc))
            else:
                log.exception("counting pending timers failed")
        await wait_any(ctx.stopping, timeout=ctx.settings.pending_gauge_seconds)
