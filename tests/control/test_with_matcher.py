"""The control plane and a real matcher process: what is published runs, and `stop --exit-all`
ends every running instance of it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nats.js.client import JetStreamContext

from cairn_common.topology import Topology
from tests.control.conftest import EXAMPLES, PARTITIONS, Admin
from tests.support.engine import Inputs, wait_for_rows
from tests.support.processes import ServiceProcess

COUNT = "SELECT count(*) FROM journey_instances WHERE journey = 'abandoned-cart'"
BY_STATUS = f"{COUNT} AND status = $1"
ON_V2 = f"{COUNT} AND version = 2"


async def test_exit_all_ends_the_instances_a_real_matcher_is_running(
    admin: Admin,
    js: JetStreamContext,
    topology: Topology,
    spawn: Callable[..., ServiceProcess],
) -> None:
    await admin.apply_files(EXAMPLES)
    await admin.ready_all_templates()
    status, body = await admin.call("POST", "/v1/journeys/abandoned-cart/publish")
    assert status == 200, body
    matcher = spawn("cairn_matcher", CAIRN_PARTITIONS=str(PARTITIONS))
    await matcher.wait_ready()

    inputs = Inputs(js, topology, PARTITIONS)
    await inputs.identify("ada", email="ada@example.com")
    for profile, cart in (("ada", "c1"), ("ada", "c2"), ("bob", "c3")):
        await inputs.send(profile, "Cart Abandoned", properties={"cart_id": cart, "cart_value": 9})
    await wait_for_rows(admin.pool, BY_STATUS, "active", expect=3)

    status, body = await admin.call(
        "POST", "/v1/journeys/abandoned-cart/stop", {"mode": "exit_all"}
    )
    assert status == 200, body
    assert body["profiles_exited"] == 2
    await wait_for_rows(admin.pool, BY_STATUS, "exited", expect=3)
    reasons = await admin.pool.fetch(
        "SELECT DISTINCT exit_reason FROM journey_instances WHERE journey = 'abandoned-cart'"
    )
    assert len(reasons) == 1


async def test_republishing_sends_new_entries_to_the_new_version_and_running_ones_stay(
    admin: Admin,
    js: JetStreamContext,
    topology: Topology,
    spawn: Callable[..., ServiceProcess],
) -> None:
    await admin.apply_files(EXAMPLES)
    await admin.ready_all_templates()
    await admin.call("POST", "/v1/journeys/abandoned-cart/publish")
    matcher = spawn("cairn_matcher", CAIRN_PARTITIONS=str(PARTITIONS))
    await matcher.wait_ready()
    inputs = Inputs(js, topology, PARTITIONS)
    await inputs.send("ada", "Cart Abandoned", properties={"cart_id": "c1", "cart_value": 9})
    await wait_for_rows(admin.pool, BY_STATUS, "active", expect=1)

    cart = (EXAMPLES / "journeys" / "abandoned-cart.yaml").read_text()
    await admin.apply_text(cart.replace("within: 1d", "within: 2d"), source="cart.yaml")
    status, body = await admin.call("POST", "/v1/journeys/abandoned-cart/publish")
    assert (status, body["version"]) == (200, 2), body

    # The matcher reloads on NOTIFY; entries keep coming until one lands on v2.
    async with asyncio.timeout(60):
        n = 0
        while not await admin.pool.fetchval(ON_V2):
            n += 1
            await inputs.send(
                f"p{n}", "Cart Abandoned", properties={"cart_id": f"c{n}", "cart_value": 1}
            )
            await wait_for_rows(admin.pool, BY_STATUS, "active", expect=1 + n)
    version = await admin.pool.fetchval(
        "SELECT version FROM journey_instances WHERE profile_id = 'ada'"
    )
    assert version == 1, "the instance that started on v1 finishes on v1"
