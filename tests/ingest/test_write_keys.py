"""Write keys as the control plane manages them: created with a secret shown once, stored hashed."""

from __future__ import annotations

import asyncpg

from cairn_common.db import migrate
from cairn_control.keys import create_key, revoke_key
from cairn_ingest.access import MISS_QUERIES_PER_SECOND, UNKNOWN_KEYS, WriteKeys
from cairn_ingest.keys import active_key_hashes, hash_secret


async def test_ingest_accepts_exactly_the_active_keys_the_control_plane_made(
    database_url: str,
) -> None:
    await migrate(database_url)
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as pool:
        created = await create_key(pool, "website", rate_limit=100)
        key_id, secret = created.key.key_id, created.secret
        stored = await pool.fetchval("SELECT key_hash FROM write_keys WHERE key_id = $1", key_id)
        assert stored == hash_secret(secret)
        assert secret not in stored
        assert await active_key_hashes(pool) == {hash_secret(secret): (key_id, 100)}

        await revoke_key(pool, key_id)
        assert await active_key_hashes(pool) == {}


async def test_a_flood_of_random_keys_costs_a_bounded_number_of_queries(database_url: str) -> None:
    """Each unknown key is looked up once; a flood of distinct ones is refused from memory past
    the per-second bound, and a real key still works (the cache knows it without a query)."""
    await migrate(database_url)

    def count(outcome: str) -> float:
        return UNKNOWN_KEYS.labels(outcome)._value.get()

    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as pool:
        real = await create_key(pool, "website")
        keys = WriteKeys(pool)
        await keys.refresh()
        queried, refused = count("queried"), count("refused")
        flood = [f"wk_random_{i}" for i in range(10 * MISS_QUERIES_PER_SECOND)]
        assert [await keys.lookup(secret) for secret in flood] == [None] * len(flood)
        looked_up = count("queried") - queried
        assert 1 <= looked_up <= MISS_QUERIES_PER_SECOND + 5  # the burst (and a refill)
        assert count("refused") - refused == len(flood) - looked_up
        found = await keys.lookup(real.secret)
        assert found is not None
        assert found.key_id == real.key.key_id
