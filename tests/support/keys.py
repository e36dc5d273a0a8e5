"""Write keys for tests, made the way an operator makes them (the control plane's keys module)."""

from __future__ import annotations

import asyncpg

from cairn_control.keys import create_key


async def new_write_key(
    database_url: str, name: str = "test", rate_limit: int | None = None
) -> tuple[str, str]:
    """Create a write key; return ``(key_id, secret)``."""
    async with asyncpg.create_pool(database_url, min_size=1, max_size=1) as pool:
        created = await create_key(pool, name, rate_limit)
    return created.key.key_id, created.secret
