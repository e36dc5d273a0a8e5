"""Ingest's lifecycle. The Tracking API arrives with the Ingest issue; the process, its
connections, health and shutdown are final."""

from __future__ import annotations

from cairn_common.runtime import ServiceContext
from cairn_control.listener import start_admin_listener
from cairn_ingest.settings import Settings


async def run(ctx: ServiceContext[Settings]) -> None:
    s = ctx.settings
    admin = await start_admin_listener(
        ctx.pool, ctx.js, ctx.topology, host=s.admin_host, port=s.admin_port,
        token=s.admin_token, partitions=s.partitions, shutdown_timeout=s.shutdown_grace_seconds,
    )  # fmt: skip
    try:
        ctx.started.set()
        await ctx.stopping.wait()
    finally:
        if admin is not None:
            await admin.cleanup()
