"""Write keys for the Tracking API: create (the secret is shown once), list, revoke.

The table is ingest's (``write_keys``, migration 0002): only the sha256 of a secret is stored, so a
lost secret cannot be recovered, only replaced. Every change ends with ``NOTIFY cairn_write_keys``
so each ingest replica refreshes its cache at once.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

import asyncpg
import msgspec

from cairn_control.errors import Invalid, NotFound
from cairn_control.store import audit

WRITE_KEYS_CHANNEL = "cairn_write_keys"


class WriteKey(msgspec.Struct, frozen=True, kw_only=True):
    key_id: str
    name: str
    rate_limit: int | None
    created_at: datetime
    revoked_at: datetime | None = None


class CreatedKey(msgspec.Struct, frozen=True, kw_only=True):
    key: WriteKey
    secret: str
    """Shown once, at creation; only its sha256 is stored."""


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _key(row: asyncpg.Record) -> WriteKey:
    return WriteKey(
        key_id=row["key_id"],
        name=row["name"],
        rate_limit=row["rate_limit"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


async def create_key(pool: asyncpg.Pool, name: str, rate_limit: int | None = None) -> CreatedKey:
    if not name.strip():
        raise Invalid("a write key needs a name (e.g. the source it is for: 'website')")
    if rate_limit is not None and rate_limit <= 0:
        raise Invalid(
            f"rate_limit must be a positive number of events per second, not {rate_limit}"
        )
    key_id = "wk_" + secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "INSERT INTO write_keys (key_id, name, key_hash, rate_limit) VALUES ($1, $2, $3, $4) "
            "RETURNING key_id, name, rate_limit, created_at, revoked_at",
            key_id,
            name,
            hash_secret(secret),
            rate_limit,
        )
        await audit(conn, "write_key.create", "WriteKey", key_id, label=name, rate_limit=rate_limit)
        await conn.execute("SELECT pg_notify($1, $2)", WRITE_KEYS_CHANNEL, key_id)
    return CreatedKey(key=_key(row), secret=secret)


async def list_keys(pool: asyncpg.Pool, *, include_revoked: bool = True) -> list[WriteKey]:
    rows = await pool.fetch(
        "SELECT key_id, name, rate_limit, created_at, revoked_at FROM write_keys "
        "WHERE $1 OR revoked_at IS NULL ORDER BY created_at, key_id",
        include_revoked,
    )
    return [_key(r) for r in rows]


async def revoke_key(pool: asyncpg.Pool, key_id: str) -> WriteKey:
    """Revoke at once (every ingest replica is notified); revoking twice keeps the first time."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE write_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = $1 "
            "RETURNING key_id, name, rate_limit, created_at, revoked_at",
            key_id,
        )
        if row is None:
            raise NotFound(f"write key {key_id!r} does not exist (cairn keys list shows them)")
        await audit(conn, "write_key.revoke", "WriteKey", key_id)
        await conn.execute("SELECT pg_notify($1, $2)", WRITE_KEYS_CHANNEL, key_id)
    return _key(row)
