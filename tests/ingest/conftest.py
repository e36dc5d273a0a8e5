"""Ingest fixtures: a real ingest (as a process, or in this process for the fast HTTP cases)
against the session's real NATS and PostgreSQL, a write key, and a reader of what reached
JetStream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from cairn_cli.local import free_port
from cairn_common.bus import provision_topology
from cairn_common.db import migrate
from cairn_common.messages import Event, decode
from cairn_common.settings import load_settings
from cairn_common.topology import Topology
from cairn_ingest.access import WriteKeys
from cairn_ingest.app import TriggerCache
from cairn_ingest.email_links import EmailLinks
from cairn_ingest.http_api import build_app
from cairn_ingest.intake import Ingestor
from cairn_ingest.publisher import EventPublisher
from cairn_ingest.settings import Settings
from tests.support.keys import new_write_key
from tests.support.processes import ServiceProcess

TRACKING_SECRET = "test-tracking-secret"


class Ingest(msgspec.Struct, kw_only=True):
    url: str
    write_key: str
    key_id: str
    database_url: str
    topology: Topology
    js: JetStreamContext
    pool: asyncpg.Pool | None = None
    proc: ServiceProcess | None = None
    triggers: TriggerCache | None = None

    async def events(
        self, expected: int | None = None, timeout: float = 15.0, *, skip: int = 0
    ) -> list[Event]:
        """Every event stored in the inputs stream, in order (waiting for ``expected`` of them),
        less the first ``skip``."""
        return await stored_events(self.js, self.topology, expected, timeout, skip=skip)

    async def count(self) -> int:
        try:
            return int((await self.js.stream_info(self.topology.inputs_stream)).state.messages)
        except NotFoundError:
            return 0

    async def new_key(self, name: str = "other", rate_limit: int | None = None) -> str:
        return (await new_write_key(self.database_url, name, rate_limit))[1]


async def stored_events(
    js: JetStreamContext,
    topology: Topology,
    expected: int | None = None,
    timeout: float = 15.0,
    *,
    skip: int = 0,
) -> list[Event]:
    async with asyncio.timeout(timeout):
        while True:
            try:
                info = await js.stream_info(topology.inputs_stream)
            except NotFoundError:
                info = None
            count = info.state.messages if info else 0
            if expected is None or count >= expected:
                break
            await asyncio.sleep(0.05)
    if info is None or not count:
        return []
    events: list[Event] = []
    for seq in range(info.state.first_seq + skip, info.state.last_seq + 1):
        msg = await js.get_msg(topology.inputs_stream, seq)
        assert msg.data is not None
        message = decode(msg.data)
        assert isinstance(message, Event)
        events.append(message)
    return events


def settings_for(database_url: str, nats_url: str, namespace: str, **extra: Any) -> Settings:
    env = {
        "CAIRN_NATS_URL": nats_url,
        "CAIRN_DATABASE_URL": database_url,
        "CAIRN_NAMESPACE": namespace,
        "CAIRN_TRACKING_SECRET": TRACKING_SECRET,
        "CAIRN_TRIGGER_REFRESH_SECONDS": "0.2",
    }
    env.update({f"CAIRN_{k.upper()}": str(v) for k, v in extra.items()})
    return load_settings(Settings, env, service_name="ingest")


InProcessFactory = Callable[..., Any]


@pytest.fixture
async def in_process(
    servers: Any,
    database_url: str,
    namespace: str,
    topology: Topology,
    nc: NATS,
    js: JetStreamContext,
) -> AsyncIterator[InProcessFactory]:
    """Start ingest's HTTP app inside the test process (real NATS, real PostgreSQL)."""
    runners: list[web.AppRunner] = []
    pools: list[asyncpg.Pool] = []
    stop = asyncio.Event()
    background: list[asyncio.Task[None]] = []
    await migrate(database_url)
    await provision_topology(js, topology)

    async def start(**settings: Any) -> Ingest:
        s = settings_for(database_url, servers.nats_url, namespace, **settings)
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        pools.append(pool)
        keys = WriteKeys(pool)
        await keys.refresh()
        background.append(asyncio.create_task(keys.keep_fresh(database_url, 30, stop)))
        triggers = TriggerCache(pool)
        await triggers.refresh()
        publisher = EventPublisher(nc, pool, topology, timeout=s.publish_timeout_seconds)
        ingestor = Ingestor(s, keys, publisher, triggers.current)
        links = EmailLinks(ingestor, pool, s)
        runner = web.AppRunner(build_app(ingestor, links), access_log=None, auto_decompress=False)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        key_id, secret = await new_write_key(database_url, "test")
        return Ingest(
            url=f"http://127.0.0.1:{port}",
            write_key=secret,
            key_id=key_id,
            database_url=database_url,
            topology=topology,
            js=js,
            pool=pool,
            triggers=triggers,
        )

    yield start
    stop.set()
    await asyncio.gather(*background)
    for runner in runners:
        await runner.cleanup()
    for pool in pools:
        await pool.close()


@pytest.fixture
def ingest_process(
    spawn: Callable[..., ServiceProcess],
    database_url: str,
    topology: Topology,
    js: JetStreamContext,
) -> Callable[..., Any]:
    """Start ``python -m cairn_ingest`` as a real process; returns the running Ingest."""

    async def start(**env: str) -> Ingest:
        port = free_port()
        proc = spawn(
            "cairn_ingest",
            CAIRN_HTTP_PORT=str(port),
            CAIRN_TRACKING_SECRET=TRACKING_SECRET,
            **env,
        )
        await proc.wait_ready()
        key_id, secret = await new_write_key(database_url, "test")
        return Ingest(
            url=f"http://127.0.0.1:{port}",
            write_key=secret,
            key_id=key_id,
            database_url=database_url,
            topology=topology,
            js=js,
            proc=proc,
        )

    return start


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
