"""Ingest's SQL: dedupe beyond JetStream's window, suppressions, Trigger documents."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import asyncpg
import msgspec


async def already_seen(pool: asyncpg.Pool, message_ids: list[str]) -> set[str]:
    """The messageIds among these that were accepted before (within the dedupe retention)."""
    rows = await pool.fetch(
        "SELECT message_id FROM ingest_dedupe WHERE message_id = ANY($1::text[])", message_ids
    )
    return {r["message_id"] for r in rows}


async def remember(pool: asyncpg.Pool, message_ids: list[str], received_at: datetime) -> None:
    """Record accepted messageIds (after JetStream acknowledged them)."""
    await pool.execute(
        "INSERT INTO ingest_dedupe (message_id, received_at) "
        "SELECT unnest($1::text[]), $2 ON CONFLICT (message_id) DO NOTHING",
        message_ids,
        received_at,
    )


async def prune_dedupe(
    pool: asyncpg.Pool, older_than: timedelta, *, tracking_older_than: timedelta | None = None
) -> int:
    """Forget messageIds accepted before ``older_than``; tracking hits' (``tracking:...``)
    before ``tracking_older_than`` (their links' time-to-live) instead."""
    status: str = await pool.execute(
        "DELETE FROM ingest_dedupe WHERE received_at < now() - $1::interval"
        " AND (message_id NOT LIKE 'tracking:%' OR received_at < now() - $2::interval)",
        older_than,
        max(older_than, tracking_older_than or older_than),
    )
    return int(status.rsplit(" ", 1)[-1])


async def suppress(
    pool: asyncpg.Pool, profile_id: str, channel: str, address: str | None, reason: str
) -> None:
    await pool.execute(
        "INSERT INTO suppressions (profile_id, channel, address, reason) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (profile_id, channel, address) DO NOTHING",
        profile_id,
        channel,
        address or "",
        reason,
    )


async def trigger_documents(pool: asyncpg.Pool) -> list[tuple[str, dict[str, Any]]]:
    """Every Trigger resource as ``(name, document)``."""
    rows = await pool.fetch(
        "SELECT name, document::text AS doc FROM resources WHERE kind = 'Trigger'"
    )
    return [(r["name"], msgspec.json.decode(r["doc"])) for r in rows]
