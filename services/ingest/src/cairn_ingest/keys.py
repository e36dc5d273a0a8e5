"""The write keys ingest accepts. They are created, listed and revoked by the control plane
(``cairn_control.keys``: admin API and ``cairn keys``); ingest only reads the hashes of the active
ones, with the same ``hash_secret``.
"""

from __future__ import annotations

import asyncpg

from cairn_control.keys import hash_secret

__all__ = ["active_key_hashes", "hash_secret"]


async def active_key_hashes(
    conn: asyncpg.Connection | asyncpg.Pool,
) -> dict[str, tuple[str, int | None]]:
    """``{key_hash: (key_id, rate_limit)}`` of every key that is not revoked."""
    rows = await conn.fetch(
        "SELECT key_hash, key_id, rate_limit FROM write_keys WHERE revoked_at IS NULL"
    )
    return {r["key_hash"]: (r["key_id"], r["rate_limit"]) for r in rows}
