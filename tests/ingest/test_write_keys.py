"""Write keys as the control plane manages them: created with a secret shown once, stored hashed."""

from __future__ import annotations

import asyncpg

from cairn_common.db import migrate
from cairn_ingest.keys import active_key_hashes, create_key, hash_secret, list_keys, revoke_key


async def test_a_created_key_is_stored_hashed_listed_and_revocable(database_url: str) -> None:
    await migrate(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        key_id, secret = await create_key(conn, "website", rate_limit=100)
        stored = await conn.fetchval("SELECT key_hash FROM write_keys WHERE key_id = $1", key_id)
        assert stored == hash_secret(secret)
        assert secret not in stored
        assert [(k.key_id, k.name, k.rate_limit) for k in await list_keys(conn)] == [
            (key_id, "website", 100)
        ]
        assert await active_key_hashes(conn) == {hash_secret(secret): (key_id, 100)}

        assert await revoke_key(conn, key_id) is True
        assert await revoke_key(conn, key_id) is False
        assert await list_keys(conn) == []
        assert [k.key_id for k in await list_keys(conn, include_revoked=True)] == [key_id]
        assert await active_key_hashes(conn) == {}
    finally:
        await conn.close()
