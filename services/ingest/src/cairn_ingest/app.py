"""Ingest's lifecycle. The Tracking API arrives with the Ingest issue; the process, its
connections, health and shutdown are final."""

from __future__ import annotations

from cairn_common.runtime import ServiceContext
from cairn_ingest.settings import Settings


async def run(ctx: ServiceContext[Settings]) -> None:
    ctx.started.set()
    await ctx.stopping.wait()
