"""Write keys: create, list and revoke (the control plane's admin API and CLI call these).

A write key has a public id (``wk_...``, shown in lists) and a secret (shown once, at creation).
Only the sha256 of the secret is stored. Clients send the secret as the HTTP Basic user or as
``writeKey`` in the body.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

import asyncpg
import msgspec

SECRET_PREFIX = "cairn_"
ID_PREFIX = "wk_"


class WriteKey(msgspec.Struct, frozen=True, kw_only=True):
    key_id: str
    name: str
    rate_limit: int | None
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class WriteKeyError(Exception):
    """A bad request about write keys, worded for the person who made it."""


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


async def create_key(
    conn: asyncpg.Connection | asyncpg.Pool, name: str, rate_limit: int | None = None
) -> tuple[str, str]:
    """Create a key; return ``(key_id, secret)``. The secret cannot be read back later."""
    if not name or not name.strip():
        raise WriteKeyError("a write key needs a name")
    if rate_limit is not None and rate_limit <= 0:
        raise WriteKeyError("rate_limit must be a positive number of events per second")
    key_id = ID_PREFIX + secrets.token_hex(8)
    secret = SECRET_PREFIX + secrets.token_urlsafe(24)
    await conn.execute(
        "INSERT INTO write_keys (key_id, name, key_hash, rate_limit) VALUES ($1, $2, $3, $4)",
        key_id,
        name.strip(),
        hash_secret(secret),
        rate_limit,
    )
    return key_id, secret


async def revoke_key(conn: asyncpg.Connection | asyncpg.Pool, key_id: str) -> bool:
    """Revoke a key (ingest refuses it within moments). False if no such active key exists."""
    status: str = await conn.execute(
        "UPDATE write_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL",
        key_id,
    )
    return status.endswith(" 1")


async def list_keys(
    conn: asyncpg.Connection | asyncpg.Pool, *, include_revoked: bool = False
) -> list[WriteKey]:
    rows = await conn.fetch(
        "SELECT key_id, name, rate_limit, created_at, revoked_at FROM write_keys "
        "WHERE $1 OR revoked_at IS NULL ORDER BY created_at, key_id",
        include_revoked,
    )
    return [WriteKey(**dict(r)) for r in rows]


async def active_key_hashes(
    conn: asyncpg.Connection | asyncpg.Pool,
) -> dict[str, tuple[str, int | None]]:
    """``{key_hash: (key_id, rate_limit)}`` of every key that is not revoked."""
    rows = await conn.fetch(
        "SELECT key_hash, key_id, rate_limit FROM write_keys WHERE revoked_at IS NULL"
    )
    return {r["key_hash"]: (r["key_id"], r["rate_limit"]) for r in rows}
