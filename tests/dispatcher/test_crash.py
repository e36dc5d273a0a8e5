"""SIGKILL between the provider call and the ledger write: at most one duplicate, same key."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from cairn_common.topology import Topology
from tests.dispatcher.support import HttpSink, Results, apply, delivery, ledger, send_requests
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.e2e


async def test_sigkill_after_the_provider_call_resends_once_with_the_same_idempotency_key(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    await apply(
        db, "Channel", "webhook", {"provider": "webhook", "options": {"url": f"{sink.url}/hook"}}
    )
    sink.hold = asyncio.Event()  # the provider has the request but has not answered yet
    first = start_dispatcher()
    await first.wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(js, topology, delivery("k-1", channel="webhook"))
    await sink.arrived.wait()
    first.kill()
    assert await first.wait_exit() != 0
    assert await ledger(db, "k-1") is None  # it died before writing the outcome
    sink.hold.set()

    second = start_dispatcher()
    await second.wait_ready()
    sent = await results.wait("k-1", "sent", timeout=90)  # after the ack wait runs out
    assert sent.attempts == 2
    assert [r.headers["webhook-id"] for r in sink.requests] == ["k-1", "k-1"]
    # Once recorded, later redeliveries send nothing more.
    await send_requests(js, topology, delivery("k-2", channel="webhook"))
    await results.wait("k-2", "sent")
    assert [r.headers["webhook-id"] for r in sink.requests] == ["k-1", "k-1", "k-2"]
