"""The matcher's SQL."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec


async def merge_traits(pool: asyncpg.Pool, profile_id: str, traits: dict[str, Any]) -> None:
    """Merge identify traits into the profile (later calls win, key by key). Idempotent."""
    await pool.execute(
        """INSERT INTO profiles (profile_id, traits) VALUES ($1, $2::jsonb)
           ON CONFLICT (profile_id) DO UPDATE
           SET traits = profiles.traits || EXCLUDED.traits, updated_at = now()""",
        profile_id,
        msgspec.json.encode(traits).decode(),
    )
