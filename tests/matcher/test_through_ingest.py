"""The abandoned-cart journey through the Segment-compatible Tracking API: real ingest, matcher
and scheduler processes; delivery requests recorded as the dispatcher would take them."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable

import aiohttp
import asyncpg
from nats.js.client import JetStreamContext

from cairn_cli.local import free_port
from cairn_common.topology import Topology
from tests.matcher.test_journeys import CART
from tests.support.engine import Deliveries, prepared, publish_journey
from tests.support.keys import new_write_key
from tests.support.processes import ServiceProcess

P = "4"


async def test_tracked_cart_abandonment_walks_the_journey_to_the_final_push(
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    pool = await prepared(database_url, js, topology)
    await publish_journey(pool, CART)
    _, write_key = await new_write_key(database_url, "shop")
    port = free_port()
    procs = [
        spawn(
            "cairn_ingest",
            CAIRN_PARTITIONS=P,
            CAIRN_HTTP_PORT=str(port),
            CAIRN_ADMIN_PORT=str(free_port()),
            CAIRN_TRACKING_SECRET="s",
        ),
        spawn("cairn_matcher", CAIRN_PARTITIONS=P),
        spawn("cairn_scheduler", CAIRN_PARTITIONS=P),
    ]
    await asyncio.gather(*(p.wait_ready() for p in procs))
    deliveries = await Deliveries(js, topology, int(P)).start()

    auth = {"Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()}
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}", headers=auth) as http:
        calls = [
            ("/v1/identify", {"userId": "zoe", "traits": {"email": "zoe@example.com",
                                                          "phone": "+15550199",
                                                          "push_token": "tok-zoe"}}),
            ("/v1/track", {"userId": "zoe", "event": "Cart Abandoned",
                           "properties": {"cart_id": "z1", "cart_value": 99.5}}),
        ]  # fmt: skip
        for path, body in calls:
            async with http.post(path, json=body) as resp:
                assert resp.status == 200, await resp.text()

    seen = await deliveries.until(3, timeout=60)
    assert [(d.step_id, d.address) for d in seen] == [
        ("initial-email", "zoe@example.com"),
        ("text-reminder", "+15550199"),
        ("final-push", "tok-zoe"),
    ]
    await _until_completed(pool, "z1")
    await pool.close()


async def _until_completed(pool: asyncpg.Pool, cart: str) -> None:
    async with asyncio.timeout(30):
        while (
            await pool.fetchval(
                "SELECT status FROM journey_instances WHERE unique_value = $1", cart
            )
            != "completed"
        ):
            await asyncio.sleep(0.1)
