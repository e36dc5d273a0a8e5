"""The dispatcher behind the real matcher: a journey's send arrives; an exit drops a queued one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from cairn_common.topology import Topology
from tests.dispatcher.support import LOOPBACK, HttpSink, Results, apply, eventually
from tests.support.engine import Inputs, metric, prepared, publish_journey
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.e2e

CART = {
    "kind": "Journey",
    "name": "cart-webhook",
    "trigger": {"event": "Cart Abandoned"},
    "entry": {"repeat": "always", "unique_by": "cart_id"},
    "exit": [{"event": "Order Completed", "match": "cart_id"}],
    "steps": [
        {"id": "ping", "send": {"channel": "webhook", "template": "cart-hook"}},
        {"id": "hold", "wait": "1h"},  # keeps the instance active, so the exit has one to end
    ],
}


async def test_journey_send_arrives_and_an_exit_drops_a_send_already_queued(
    db: asyncpg.Connection,
    database_url: str,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    spawn: Callable[..., ServiceProcess],
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    pool = await prepared(database_url, js, topology)
    await apply(
        db,
        "Channel",
        "webhook",
        {
            "provider": "webhook",
            "endpoint": f"{sink.url}/hook",
            "options": {"allow_networks": LOOPBACK},
        },
    )
    await apply(
        db,
        "Template",
        "cart-hook",
        {"channel": "webhook", "body": '{"cart": "{{ event.properties.cart_id }}"}'},
    )
    matcher = spawn("cairn_matcher")
    await matcher.wait_ready()
    await publish_journey(pool, CART)
    await eventually(lambda: _loaded(matcher.health_url))
    inputs = Inputs(js, topology, 64)

    async def queued() -> int:
        info = await js.stream_info(topology.deliveries_stream)
        return int(info.state.messages)

    # The send is queued, then the shopper orders before any dispatcher has taken it.
    await inputs.send("p1", "Cart Abandoned", properties={"cart_id": "c-exit"})
    await eventually(lambda: _equals(queued(), 1))
    await inputs.send("p1", "Order Completed", properties={"cart_id": "c-exit"})
    await eventually(
        lambda: _equals(
            pool.fetchval("SELECT status FROM journey_instances WHERE unique_value = 'c-exit'"),
            "exited",
        )
    )
    await inputs.send("p2", "Cart Abandoned", properties={"cart_id": "c-keep"})
    await eventually(lambda: _equals(queued(), 2))

    results = await Results.listen(nc, topology)
    await start_dispatcher().wait_ready()
    await eventually(lambda: len(results.items) >= 2)
    outcomes = {r.profile_id: r.outcome for r in results.items}
    assert outcomes == {"p1": "dropped", "p2": "sent"}
    assert [r.json() for r in sink.requests] == [{"cart": "c-keep"}]
    await pool.close()


async def _loaded(url: str) -> bool:
    return await metric(url, "cairn_matcher_loaded_versions") >= 1


async def _equals(value: object, expected: object) -> bool:
    if asyncio.iscoroutine(value):
        value = await value
    return value == expected
