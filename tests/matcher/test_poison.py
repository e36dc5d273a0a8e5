"""A poison input never blocks its partition: through a real matcher process, real NATS, real
PostgreSQL.

The inputs are published straight into CAIRN_INPUTS, past ingest's validation (as a message from
an older ingest, a NATS-ingestion client or a re-drive would arrive), and before the matcher
starts, so the poison and its neighbours arrive in one fetched batch and one group commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
import asyncpg
import pytest
from nats.js.client import JetStreamContext

from cairn_common.messages import DeadLetter, decode
from cairn_common.partitioning import partition_for
from cairn_common.topology import Topology
from tests.support.engine import (
    CART_EMAIL,
    Deliveries,
    Inputs,
    dead_letters,
    prepared,
    publish_journey,
    wait_for_rows,
)
from tests.support.processes import ServiceProcess

P = 4


def same_partition(count: int) -> list[str]:
    """``count`` profile ids that all hash to one partition: neighbours of the poison."""
    target = partition_for("ann", P)
    ids, n = ["ann"], 0
    while len(ids) < count:
        pid = f"neighbour-{n}"
        n += 1
        if partition_for(pid, P) == target:
            ids.append(pid)
    return ids


@pytest.fixture
async def pool(
    database_url: str, js: JetStreamContext, topology: Topology
) -> AsyncIterator[asyncpg.Pool]:
    pool = await prepared(database_url, js, topology)
    await publish_journey(pool, CART_EMAIL)
    yield pool
    await pool.close()


async def input_dead_letters(js: JetStreamContext, topology: Topology) -> list[DeadLetter]:
    return await dead_letters(js, topology, topology.inputs_stream)


async def test_a_nul_in_a_trait_is_dead_lettered_and_its_partition_goes_on(
    spawn: Callable[..., ServiceProcess],
    pool: asyncpg.Pool,
    js: JetStreamContext,
    topology: Topology,
) -> None:
    """PostgreSQL refuses a NUL in jsonb (``t::jsonb``) for good. The identify carrying one is
    dead-lettered with that reason; every other input of its batch is committed: the neighbours'
    identifies and sends, and the poisoned profile's own later inputs."""
    ann, *neighbours = same_partition(4)
    inputs = Inputs(js, topology, P)
    for pid in [ann, *neighbours]:
        await inputs.identify(pid, email=f"{pid}@example.com")
    poison = await inputs.identify(ann, nick="a\u0000b")
    for pid in [*neighbours, ann]:
        await inputs.send(pid, "Cart Abandoned")

    spawn("cairn_matcher", CAIRN_PARTITIONS=str(P))

    deliveries = await Deliveries(js, topology, P).start()
    await deliveries.until(4, timeout=30)
    sent = await deliveries.settle(quiet=0.5)
    assert sorted(d.profile_id for d in sent) == sorted([ann, *neighbours])
    assert {d.address for d in sent} == {f"{pid}@example.com" for pid in [ann, *neighbours]}

    [letter] = await input_dead_letters(js, topology)
    assert decode(letter.data) == poison
    assert letter.consumer == "matcher"
    assert "its writes were refused" in letter.reason
    assert "22P05" in letter.reason, letter.reason  # untranslatable character: named, with SQLSTATE
    traits = await pool.fetchval("SELECT traits::text FROM profiles WHERE profile_id = $1", ann)
    assert "nick" not in traits
    assert "ann@example.com" in traits
    partition = partition_for(ann, P)
    applied = await pool.fetchval(
        "SELECT last_applied_seq FROM partition_leases WHERE partition = $1", partition
    )
    assert applied > letter.stream_seq  # the poison is behind the partition: never taken again


async def test_traits_past_their_budget_are_refused_and_the_profile_goes_on(
    spawn: Callable[..., ServiceProcess],
    pool: asyncpg.Pool,
    js: JetStreamContext,
    topology: Topology,
) -> None:
    """Traits only grow and every delivery request carries them: an identify that would take a
    profile past CAIRN_MAX_PROFILE_TRAITS_BYTES is dead-lettered, naming the budget and the size;
    the identifies before it and the profile's journey are kept."""
    inputs = Inputs(js, topology, P)
    await inputs.identify("ann", email="ann@example.com", a="x" * 1500)
    await inputs.identify("ann", b="x" * 1500)
    refused = await inputs.identify("ann", c="x" * 1500)
    await inputs.send("ann", "Cart Abandoned")

    spawn("cairn_matcher", CAIRN_PARTITIONS=str(P), CAIRN_MAX_PROFILE_TRAITS_BYTES="4096")

    deliveries = await Deliveries(js, topology, P).start()
    [sent] = await deliveries.until(1, timeout=30)
    assert sent.address == "ann@example.com"
    assert set(sent.profile) >= {"a", "b"}
    assert "c" not in sent.profile
    [letter] = await input_dead_letters(js, topology)
    assert decode(letter.data) == refused
    assert "CAIRN_MAX_PROFILE_TRAITS_BYTES" in letter.reason
    assert "4,096 bytes" in letter.reason
    assert "'ann'" in letter.reason
    size = await pool.fetchval(
        "SELECT octet_length(traits::text) FROM profiles WHERE profile_id = 'ann'"
    )
    assert size <= 4096


async def readiness(proc: ServiceProcess) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(f"{proc.health_url}/readyz") as resp:
        return resp.status, await resp.text()


async def test_a_partition_that_cannot_commit_waits_says_so_and_loses_nothing(
    spawn: Callable[..., ServiceProcess],
    pool: asyncpg.Pool,
    js: JetStreamContext,
    topology: Topology,
) -> None:
    """Not a poison: PostgreSQL is unavailable to the commit (here a lock an operator holds).
    Nothing is dead-lettered; the partition waits, keeping its order, ``/readyz`` names it; once
    the database is back the batch commits and the send goes out once."""
    matcher = spawn("cairn_matcher", CAIRN_PARTITIONS=str(P), CAIRN_STALLED_AFTER_SECONDS="1")
    await matcher.wait_ready()
    inputs = Inputs(js, topology, P)
    await inputs.identify("ann", email="ann@example.com")
    await wait_for_rows(pool, "SELECT count(*) FROM profiles", expect=1)

    async with pool.acquire() as conn:
        lock = conn.transaction()
        await lock.start()
        await conn.execute("LOCK TABLE profile_states IN ACCESS EXCLUSIVE MODE")
        try:
            await inputs.send("ann", "Cart Abandoned")
            async with asyncio.timeout(20):
                while (status := await readiness(matcher))[0] == 200:
                    await asyncio.sleep(0.2)
            assert status[0] == 503
            assert f"partition {partition_for('ann', P)} has not committed" in status[1]
        finally:
            await lock.rollback()

    deliveries = await Deliveries(js, topology, P).start()
    await deliveries.until(1, timeout=30)
    assert [d.profile_id for d in await deliveries.settle(quiet=0.5)] == ["ann"]
    async with asyncio.timeout(20):
        while (await readiness(matcher))[0] != 200:
            await asyncio.sleep(0.2)
    assert await input_dead_letters(js, topology) == []
