"""The life of a Cairn service process.

``run_service`` loads settings (a bad value stops start-up with a message naming the variable),
connects to NATS and PostgreSQL (retrying until they answer or the process is told to stop),
applies migrations, provisions the topology, serves ``/healthz``, ``/readyz`` and ``/metrics``, and
runs the service's work under a ``TaskGroup``.

Shutdown on SIGTERM/SIGINT: the signal only sets ``stopping``. The work sees it, stops fetching and
finishes what is in flight; whatever is still running after ``shutdown_grace_seconds`` is cancelled.
Then NATS is drained (pending publishes flushed) and the pool closed with a timeout. The first fatal
error is re-raised and the process exits non-zero, so Kubernetes restarts it.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

import asyncpg
import structlog
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cairn_common.bus import connect, provision_topology
from cairn_common.consume import BatchHandler, PullConsumer
from cairn_common.db import apply_migrations, create_pool
from cairn_common.failures import describe, is_transient
from cairn_common.give_ups import GiveUps
from cairn_common.nats_auth import inbox_prefix
from cairn_common.observability import configure_logging, configure_tracing
from cairn_common.settings import CommonSettings, SettingsError, load_settings
from cairn_common.topology import ConsumerSpec, Topology

log = structlog.get_logger(__name__)

S = TypeVar("S", bound=CommonSettings)
SettingsT = TypeVar("SettingsT", bound=CommonSettings)
ReadyCheck = Callable[[], Awaitable[list[str]]]
"""A readiness check of the work: the problems it sees now (none: ready). Each problem is a
sentence for a person; ``/readyz`` lists them and ``cairn status`` shows them."""


class ServiceContext(Generic[SettingsT]):
    """What a service's work gets: its settings, the connections, and the stop signal."""

    def __init__(
        self, settings: SettingsT, nc: NATS, pool: asyncpg.Pool, stopping: asyncio.Event
    ) -> None:
        self.settings = settings
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.pool = pool
        self.stopping = stopping
        self.topology = Topology(
            settings.namespace,
            inputs_max_bytes=settings.inputs_max_bytes,
            deliveries_max_bytes=settings.deliveries_max_bytes,
            dead_letters_max_bytes=settings.dead_letters_max_bytes,
        )
        self.started = asyncio.Event()
        """Set by the work once it is consuming/serving; /readyz waits for it."""
        self.ready_checks: list[ReadyCheck] = []


Work = Callable[[ServiceContext[S]], Coroutine[Any, Any, None]]


def run_service(name: str, settings_cls: type[S], work: Work[S]) -> None:
    """Entry point for ``python -m cairn_<name>``. Never returns normally on a fatal error."""
    try:
        settings = load_settings(settings_cls, service_name=name)
    except SettingsError as exc:
        print(f"cairn-{name}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(name, fmt=settings.log_format, level=settings.log_level)
    provider = configure_tracing(name)
    try:
        asyncio.run(_serve(settings, work))
    except* Exception as group:
        log.error("service failed", error=repr(group.exceptions[0]))
        raise SystemExit(1) from None
    finally:
        if provider is not None:
            provider.shutdown()


async def _serve(settings: S, work: Work[S]) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    nc = await _retry_until(
        "nats",
        lambda: connect(
            settings.nats_url,
            name=settings.service_name,
            user=settings.nats_user,
            password=settings.nats_password,
            inbox_prefix=inbox_prefix(settings.namespace, settings.service_name),
            ca_file=settings.nats_ca_file,
        ),
        stopping,
    )
    pool = await _retry_until(
        "postgres",
        lambda: create_pool(
            settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max
        ),
        stopping,
    )
    if nc is None or pool is None:
        return  # told to stop before the dependencies answered
    ctx = ServiceContext(settings, nc, pool, stopping)
    health = await _start_health_server(ctx)
    try:
        if settings.migrate_on_start:
            async with pool.acquire() as conn:
                await apply_migrations(conn)
        await provision_topology(ctx.js, ctx.topology, replicas=settings.stream_replicas)
        # What start-up made (modules, clients, settings) lives as long as the process: out of
        # the collector's way, so a full collection walks only what the work creates.
        gc.freeze()
        await _run_work(ctx, work)
    finally:
        await _close(ctx, health)


async def _run_work(ctx: ServiceContext[S], work: Work[S]) -> None:
    grace = ctx.settings.shutdown_grace_seconds
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(work(ctx), name="work")
        stop = tg.create_task(ctx.stopping.wait(), name="stop-signal")
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            log.info("stopping: finishing in-flight work", grace_seconds=grace)
            _, pending = await asyncio.wait({task}, timeout=grace)
            if pending:
                log.warning("grace period over: cancelling unfinished work")
                task.cancel()
        stop.cancel()


async def _close(ctx: ServiceContext[S], health: web.AppRunner) -> None:
    try:
        if ctx.nc.is_connected:
            await asyncio.wait_for(ctx.nc.drain(), timeout=5)
        else:
            await ctx.nc.close()
    except (TimeoutError, OSError) as exc:
        log.warning("nats drain incomplete", error=str(exc))
    try:
        await asyncio.wait_for(ctx.pool.close(), timeout=5)
    except TimeoutError:
        ctx.pool.terminate()
    await health.cleanup()
    log.info("stopped")


T = TypeVar("T")


async def _retry_until(
    what: str, attempt: Callable[[], Awaitable[T]], stop: asyncio.Event
) -> T | None:
    delay = 0.2
    while not stop.is_set():
        try:
            return await attempt()
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning(f"{what} not reachable yet", error=describe(exc))
        try:
            await asyncio.wait_for(stop.wait(), timeout=delay)
        except TimeoutError:
            delay = min(delay * 2, 5.0)
    return None


async def _start_health_server(ctx: ServiceContext[S]) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "service": ctx.settings.service_name})

    async def readyz(_: web.Request) -> web.Response:
        problems = await _readiness_problems(ctx)
        status = 200 if not problems else 503
        return web.json_response(
            {"ready": not problems, "service": ctx.settings.service_name, "problems": problems},
            status=status,
        )

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, ctx.settings.health_host, ctx.settings.health_port)
    await site.start()
    port = runner.addresses[0][1]
    log.info("health server listening", url=f"http://{ctx.settings.health_host}:{port}")
    return runner


async def _readiness_problems(ctx: ServiceContext[S]) -> list[str]:
    problems: list[str] = []
    if ctx.stopping.is_set():
        problems.append("shutting down")
    if not ctx.nc.is_connected:
        problems.append("nats not connected")
    try:
        await asyncio.wait_for(ctx.pool.fetchval("SELECT 1"), timeout=1.0)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        problems.append(f"database unreachable: {exc or type(exc).__name__}")
    if not ctx.started.is_set():
        problems.append("starting")
    for check in ctx.ready_checks:
        problems.extend(await check())
    return problems


async def consume(
    ctx: ServiceContext[S], consumer_: ConsumerSpec | str, handler: BatchHandler
) -> None:
    """Run a durable consumer (a spec, or the name of one in the topology) until the service is
    stopping."""
    spec = ctx.topology.consumer(consumer_) if isinstance(consumer_, str) else consumer_
    consumer = PullConsumer(
        ctx.js,
        ctx.topology,
        spec,
        handler,
        batch=ctx.settings.fetch_batch,
        fetch_timeout=ctx.settings.fetch_timeout_seconds,
    )
    ctx.started.set()
    log.info("consuming", stream=spec.stream, consumer=spec.durable)
    async with asyncio.TaskGroup() as tg:
        # What JetStream stops delivering because a replica died on its last delivery.
        tg.create_task(GiveUps(ctx.js, ctx.topology).run(ctx.stopping), name="give-ups")
        await consumer.run(ctx.stopping)
