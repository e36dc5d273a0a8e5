"""Ingest's lifecycle: the write-key and trigger caches, the HTTP listener, NATS ingestion, and
the dedupe pruner, all under one TaskGroup; on SIGTERM the listeners stop taking requests and the
ones in flight are answered (after their PubAcks) before NATS is drained."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import structlog
from aiohttp import web

from cairn_common.runtime import ServiceContext
from cairn_control.listener import start_admin_listener
from cairn_ingest import nats_api, repo
from cairn_ingest.access import WriteKeys
from cairn_ingest.email_links import EmailLinks
from cairn_ingest.http_api import build_app
from cairn_ingest.intake import Ingestor
from cairn_ingest.publisher import EventPublisher
from cairn_ingest.schemas import TriggerSchemas
from cairn_ingest.settings import Settings

log = structlog.get_logger(__name__)


class TriggerCache:
    """The Trigger schemas in force, reloaded from ``resources`` every few seconds."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.schemas = TriggerSchemas()

    def current(self) -> TriggerSchemas:
        return self.schemas

    async def refresh(self) -> None:
        try:
            self.schemas = TriggerSchemas.from_documents(await repo.trigger_documents(self._pool))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("trigger schemas not refreshed", error=str(exc))

    async def keep_fresh(self, every: float, stop: asyncio.Event) -> None:
        while not await _stopped_within(stop, every):
            await self.refresh()


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


async def prune_dedupe(pool: asyncpg.Pool, settings: Settings, stop: asyncio.Event) -> None:
    keep = timedelta(hours=settings.dedupe_retention_hours)
    # A tracking hit's messageId is kept as long as its link works, so no replay gets through.
    links = max(keep, timedelta(days=settings.tracking_link_ttl_days))
    while not await _stopped_within(stop, settings.dedupe_prune_interval_seconds):
        try:
            pruned = await repo.prune_dedupe(pool, keep, tracking_older_than=links)
            log.info("dedupe pruned", rows=pruned)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("dedupe prune failed", error=str(exc))


async def run(ctx: ServiceContext[Settings]) -> None:
    s = ctx.settings
    keys = WriteKeys(ctx.pool)
    await keys.refresh()
    triggers = TriggerCache(ctx.pool)
    await triggers.refresh()
    publisher = EventPublisher(
        ctx.nc,
        ctx.pool,
        ctx.topology,
        timeout=s.publish_timeout_seconds,
    )
    ingestor = Ingestor(s, keys, publisher, triggers.current)
    links = EmailLinks(ingestor, ctx.pool, s) if s.tracking_secrets else None
    runner = web.AppRunner(
        build_app(ingestor, links),
        access_log=None,
        handle_signals=False,
        auto_decompress=False,
        shutdown_timeout=s.shutdown_grace_seconds,
    )
    await runner.setup()
    site = web.TCPSite(runner, s.http_host, s.http_port, reuse_address=True)
    await site.start()
    log.info("tracking api listening", url=f"http://{s.http_host}:{runner.addresses[0][1]}")
    admin = await start_admin_listener(
        ctx.pool, ctx.js, ctx.topology, host=s.admin_host, port=s.admin_port,
        token=s.admin_token, partitions=s.partitions, shutdown_timeout=s.shutdown_grace_seconds,
    )  # fmt: skip
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(
                keys.keep_fresh(s.database_url, s.write_key_refresh_seconds, ctx.stopping)
            )
            tg.create_task(triggers.keep_fresh(s.trigger_refresh_seconds, ctx.stopping))
            tg.create_task(prune_dedupe(ctx.pool, s, ctx.stopping))
            if links is not None:
                tg.create_task(links.backlog.run(ctx.stopping))
            subscribed = asyncio.Event()
            tg.create_task(nats_api.serve(ctx.nc, ctx.topology, ingestor, ctx.stopping, subscribed))
            await subscribed.wait()
            ctx.started.set()
            await ctx.stopping.wait()
            await runner.cleanup()  # stop listening; requests in flight are answered first
    finally:
        await runner.cleanup()
        if admin is not None:
            await admin.cleanup()
