"""The scheduler's lifecycle. Timer storage and firing arrive with the Matcher/Scheduler issue;
the process, its connections, health and shutdown are final."""

from __future__ import annotations

from cairn_common.runtime import ServiceContext
from cairn_scheduler.settings import Settings


async def run(ctx: ServiceContext[Settings]) -> None:
    ctx.started.set()
    await ctx.stopping.wait()
