"""Partition ownership: a fair split, takeover when a replica dies, and fencing of the old owner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from cairn_common.db import apply_migrations
from cairn_matcher.leases import LeaseLost, PartitionLeases

P = 16


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=6)
    async with pool.acquire() as conn:
        await apply_migrations(conn)
    yield pool
    await pool.close()


def replica(pool: asyncpg.Pool, name: str, ttl: float = 1.0) -> PartitionLeases:
    return PartitionLeases(pool, name, P, ttl=ttl, renew=ttl / 3)


async def settle(*replicas: PartitionLeases, rounds: int = 3) -> None:
    for _ in range(rounds):
        for r in replicas:
            await r.rebalance()


async def test_replicas_split_partitions_fairly_and_never_share_one(pool: asyncpg.Pool) -> None:
    a, b, c = replica(pool, "a"), replica(pool, "b"), replica(pool, "c")
    await a._ensure_rows()
    await a.rebalance()
    assert set(a.held) == set(range(P)), "a lone replica owns every partition"
    await settle(a, b, c)
    sizes = sorted(len(r.held) for r in (a, b, c))
    assert sizes == [5, 5, 6]
    owned = [p for r in (a, b, c) for p in r.held]
    assert sorted(owned) == list(range(P)), "each partition has exactly one owner"


async def test_a_dead_replicas_partitions_are_taken_over_after_its_lease_expires(
    pool: asyncpg.Pool,
) -> None:
    a, b = replica(pool, "a"), replica(pool, "b")
    await a._ensure_rows()
    await settle(a, b)
    assert len(a.held) == len(b.held) == P // 2
    # b dies: it stops renewing. a keeps renewing and takes b's partitions once they expire.
    async with asyncio.timeout(10):
        while len(a.held) < P:
            await a.rebalance()
            await asyncio.sleep(0.2)
    assert set(a.held) == set(range(P))


async def test_the_old_owner_is_fenced_out_after_a_takeover(pool: asyncpg.Pool) -> None:
    a, b = replica(pool, "a", ttl=0.5), replica(pool, "b", ttl=0.5)
    await a._ensure_rows()
    await a.rebalance()
    async with pool.acquire() as conn, conn.transaction():
        assert await a.fence(conn, 3) == 0
    await asyncio.sleep(0.7)  # a's lease on everything expires; b, alone alive, takes over
    await b.rebalance()
    assert 3 in b.held
    async with pool.acquire() as conn:
        with pytest.raises(LeaseLost):
            async with conn.transaction():
                await a.fence(conn, 3)
        async with conn.transaction():
            await b.fence(conn, 3)


async def test_a_clean_stop_hands_partitions_over_at_once(pool: asyncpg.Pool) -> None:
    a, b = replica(pool, "a", ttl=30), replica(pool, "b", ttl=30)
    await a._ensure_rows()
    await settle(a, b)
    await b.release_all()
    await a.rebalance()
    assert set(a.held) == set(range(P)), "no 30 s wait for expiry after a clean stop"


async def test_a_restarted_replica_of_the_same_name_takes_its_partitions_back_at_once(
    pool: asyncpg.Pool,
) -> None:
    """A SIGKILLed matcher restarted under its name (a container restart keeps the pod name)
    does not wait out its previous process's leases, and the old process is fenced out."""
    old = replica(pool, "pod-0", ttl=60.0)
    await old._ensure_rows()
    await old.rebalance()
    assert set(old.held) == set(range(P))
    epochs = dict(old.held)
    # The old process dies without releasing; a new one of the same name starts 60 s before
    # the leases would expire.
    new = replica(pool, "pod-0", ttl=60.0)
    stop = asyncio.Event()
    running = asyncio.create_task(new.run(stop))
    try:
        async with asyncio.timeout(10):
            while len(new.held) < P:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await running
    assert all(new.held[p] == epochs[p] + 1 for p in range(P)), "taken with a new epoch"
    async with pool.acquire() as conn:
        with pytest.raises(LeaseLost):
            async with conn.transaction():
                await old.fence(conn, 3, epochs[3])
