"""Concurrent committers and the lease renewal under load take rows in one order: no deadlock.

The real ``Engine`` (several committers, small groups so they overlap) and the real
``PartitionLeases`` renewing every few milliseconds, in this process, on a real PostgreSQL. Every
partition's worker applies a stream of batches whose inputs enter journeys in random order, so
the committers upsert the same ``journey_stats`` rows and fence interleaved sets of partitions
while the renewal locks every lease row.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from cairn_common.messages import Event, encode
from cairn_common.partitioning import partition_for
from cairn_common.topology import Topology
from cairn_matcher.engine import Engine, Input
from cairn_matcher.journeys import JourneyCatalogue
from cairn_matcher.leases import LeaseLost, PartitionLeases
from cairn_matcher.outbox import Outbox, payload_bound
from tests.support.engine import prepared, publish_journey

P = 32
JOURNEYS = 6
BATCHES_PER_PARTITION = 25
INPUTS_PER_BATCH = 6


def journey(n: int) -> dict[str, object]:
    return {
        "kind": "Journey",
        "name": f"j{n}",
        "trigger": {"event": f"Started {n}"},
        "steps": [{"id": "pause", "wait": "1d"}],
    }


def profiles_by_partition(per_partition: int) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {p: [] for p in range(P)}
    n = 0
    while any(len(ids) < per_partition for ids in found.values()):
        pid = f"user-{n}"
        n += 1
        ids = found[partition_for(pid, P)]
        if len(ids) < per_partition:
            ids.append(pid)
    return found


async def deadlocks(database_url: str) -> int:
    """``pg_stat_database.deadlocks`` of the test's database, as flushed so far."""
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        )
        return count
    finally:
        await conn.close()


async def settled_deadlocks(database_url: str, before: int) -> int:
    """Backends report their counters when idle or at exit, not at once: wait (bounded) until
    the count has held still for a while, returning the delta since ``before``."""
    last, still = await deadlocks(database_url), 0
    async with asyncio.timeout(30):
        while still < 4:
            await asyncio.sleep(0.5)
            now = await deadlocks(database_url)
            still = still + 1 if now == last else 0
            last = now
    return last - before


@pytest.fixture
async def pool(
    database_url: str, js: JetStreamContext, topology: Topology
) -> AsyncIterator[asyncpg.Pool]:
    setup = await prepared(database_url, js, topology)
    for n in range(JOURNEYS):
        await publish_journey(setup, journey(n))
    await setup.close()
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=10)
    yield pool
    await pool.close()


async def test_committers_and_lease_renewal_under_load_never_deadlock(
    pool: asyncpg.Pool, database_url: str, nc: NATS, js: JetStreamContext, topology: Topology
) -> None:
    before = await deadlocks(database_url)
    leases = PartitionLeases(pool, "solo", P, ttl=30.0, renew=0.01)
    journeys = JourneyCatalogue(pool, database_url)
    await journeys.load()
    outbox = Outbox(js, pool, relay_after=60.0, topology=topology, partitions=P,
                    max_bytes=payload_bound(nc.max_payload))  # fmt: skip
    engine = Engine(pool, leases, journeys, topology, outbox=outbox, max_cached_profiles=100_000,
                    notify_within=0.0, committers=4, max_group=3 * INPUTS_PER_BATCH)  # fmt: skip
    failures: Counter[str] = Counter()
    stop = asyncio.Event()
    seq = iter(range(1, 10**9))
    people = profiles_by_partition(INPUTS_PER_BATCH * 2)

    def batch(partition: int) -> list[Input]:
        items = []
        for pid in random.sample(people[partition], INPUTS_PER_BATCH):
            now = datetime.now(UTC)
            ev = Event(
                message_id=uuid.uuid4().hex, type="track", profile_id=pid, user_id=pid,
                partition=partition, received_at=now, timestamp=now,
                event=f"Started {random.randrange(JOURNEYS)}",
            )  # fmt: skip
            subject = topology.input_subject(partition, "event")
            items.append(Input(next(seq), subject, encode(ev), {}, 1, ev))
        return items

    async def worker(partition: int) -> None:
        """One batch in flight per partition, as the partition workers do; a failed commit is
        retried (it rolled back), a lost lease ends the worker."""
        for _ in range(BATCHES_PER_PARTITION):
            items = batch(partition)
            while True:
                try:
                    await engine.apply(partition, leases.held[partition], items)
                    break
                except LeaseLost:
                    failures["LeaseLost"] += 1
                    return
                except asyncpg.PostgresError as exc:
                    failures[type(exc).__name__] += 1

    async with asyncio.TaskGroup() as background:
        background.create_task(leases.run(stop))
        background.create_task(engine.run(stop))
        async with asyncio.timeout(10):
            while len(leases.held) < P:
                await asyncio.sleep(0.05)
        epochs = dict(leases.held)
        async with asyncio.timeout(240):
            await asyncio.gather(*(worker(p) for p in range(P)))
        stop.set()

    applied = await pool.fetchval("SELECT count(*) FROM journey_instances")
    held = await pool.fetch("SELECT partition, epoch FROM partition_leases WHERE owner = 'solo'")
    await pool.close()  # the backends report their counters as they exit
    assert failures == Counter(), "no commit rolled back and no lease was lost"
    assert await settled_deadlocks(database_url, before) == 0
    assert {r["partition"]: r["epoch"] for r in held} == epochs == leases.held, (
        "every lease was renewed throughout, never lost and retaken"
    )
    assert applied > 0
