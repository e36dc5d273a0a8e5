"""SIGTERM with work in flight: the fetched batch finishes and is acked, nothing is lost and
nothing is handled twice across a restart."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
from nats.js.client import JetStreamContext

from cairn_common.bus import provision_topology, publish
from cairn_common.topology import Topology
from tests.foundation.test_bus import make_event
from tests.support.counting_worker import counting_consumer
from tests.support.processes import ServiceProcess

WORKER = "tests.support.counting_worker"


async def handled(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        if not await conn.fetchval("SELECT to_regclass('handled') IS NOT NULL"):
            return {}
        return {r["message_id"]: r["times"] for r in await conn.fetch("SELECT * FROM handled")}
    finally:
        await conn.close()


async def test_sigterm_finishes_the_batch_in_flight_and_a_restart_handles_the_rest(
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    await provision_topology(js, topology)
    total, batch = 24, 4
    for n in range(total):
        await publish(js, topology.input_subject(n % 4, "event"), make_event(n), msg_id=f"m-{n}")

    env = {"CAIRN_FETCH_BATCH": str(batch), "CAIRN_HANDLE_DELAY_SECONDS": "0.15"}
    first = spawn(WORKER, **env)
    await first.wait_ready()
    async with asyncio.timeout(20):
        while len(await handled(database_url)) < 2:
            await asyncio.sleep(0.05)
    first.terminate()
    assert await first.wait_exit(timeout=20) == 0

    after_stop = await handled(database_url)
    assert 0 < len(after_stop) < total, "the stop should land mid-way through the work"
    assert len(after_stop) % batch == 0, "the batch in flight is finished, not abandoned"
    consumer = await js.consumer_info(topology.inputs_stream, counting_consumer(topology).durable)
    assert consumer.num_ack_pending == 0, "everything handled was acked before exit"

    second = spawn(WORKER, **env)
    await second.wait_ready()
    async with asyncio.timeout(30):
        while len(await handled(database_url)) < total:
            await asyncio.sleep(0.05)
    second.terminate()
    assert await second.wait_exit(timeout=20) == 0
    final = await handled(database_url)
    assert final == {f"m-{n}": 1 for n in range(total)}
