"""Write keys as the control plane manages them: created with a secret shown once, stored hashed."""

from __future__ import annotations

import asyncpg

from cairn_common.db import migrate
from cairn_control.keys import create_key, revoke_key
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
