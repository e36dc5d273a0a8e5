"""Who may send: the write-key cache and each key's token-bucket rate limit.

Every replica keeps the hashes of active keys in memory. The cache is refreshed on
``NOTIFY cairn_write_keys`` (migration 0002 fires it on any change), every
``CAIRN_WRITE_KEY_REFRESH_SECONDS`` in case a notification was missed, and on a miss (a key created
a moment ago is accepted at once). A key is always required: ``cairn up`` creates a default one.
"""

from __future__ import annotations

import asyncio
import math
import time

import asyncpg
import msgspec
import structlog
from prometheus_client import Counter

from cairn_ingest.keys import active_key_hashes, hash_secret

log = structlog.get_logger(__name__)
CHANNEL = "cairn_write_keys"
MISS_TTL_SECONDS = 2.0
MAX_REMEMBERED_MISSES = 10_000
MISS_QUERIES_PER_SECOND = 50
"""How many unknown keys a replica looks up in PostgreSQL per second. A flood of random keys is
refused from memory beyond that, so it cannot turn into a flood of queries; a key created a
moment ago still works at once, through NOTIFY, which adds it to the cache without a lookup."""

UNKNOWN_KEYS = Counter(
    "cairn_ingest_unknown_key_lookups_total",
    "Unknown write keys: looked up in PostgreSQL, or refused from memory (flood bound)",
    ["outcome"],
)


class KnownKey(msgspec.Struct, frozen=True):
    key_id: str
    rate_limit: int | None


class TokenBucket:
    """``rate`` events per second with a burst of one second's worth. A batch bigger than the
    burst is let through when the bucket is full (and leaves it in debt), so it is never refused
    forever."""

    def __init__(self, rate: int) -> None:
        self.rate = float(rate)
        self.tokens = float(rate)
        self.updated = time.monotonic()

    def take(self, n: int) -> float:
        """Take ``n`` tokens; return 0 if allowed, else seconds until it would be."""
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        need = min(float(n), self.rate)
        if self.tokens >= need:
            self.tokens -= n
            return 0.0
        return (need - self.tokens) / self.rate


class WriteKeys:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._keys: dict[str, KnownKey] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._changed = asyncio.Event()
        self._miss_queries = TokenBucket(MISS_QUERIES_PER_SECOND)
        self._unknown: dict[str, float] = {}
        """Recent misses (digest → when), so a flood of bad keys costs no database queries.
        A key created meanwhile still works at once: NOTIFY refreshes ``_keys``, read first."""

    async def refresh(self) -> None:
        found = await active_key_hashes(self._pool)
        self._keys = {h: KnownKey(key_id, rate) for h, (key_id, rate) in found.items()}
        self._unknown.clear()
        live = {(k.key_id, k.rate_limit) for k in self._keys.values()}
        self._buckets = {
            key_id: bucket
            for key_id, bucket in self._buckets.items()
            if (key_id, int(bucket.rate)) in live
        }

    async def lookup(self, secret: str | None) -> KnownKey | None:
        """The active key with this secret, or None."""
        if not secret:
            return None
        digest = hash_secret(secret)
        known = self._keys.get(digest)
        if known is not None:
            return known
        now = time.monotonic()
        missed = self._unknown.get(digest)
        if missed is not None and now - missed < MISS_TTL_SECONDS:
            return None
        if self._miss_queries.take(1):
            UNKNOWN_KEYS.labels("refused").inc()
            return None
        UNKNOWN_KEYS.labels("queried").inc()
        row = await self._pool.fetchrow(
            "SELECT key_id, rate_limit FROM write_keys WHERE key_hash = $1 AND revoked_at IS NULL",
            digest,
        )
        if row is None:
            if len(self._unknown) >= MAX_REMEMBERED_MISSES:
                self._unknown.clear()
            self._unknown[digest] = now
            return None
        known = KnownKey(row["key_id"], row["rate_limit"])
        self._keys[digest] = known
        return known

    def admit(self, key: KnownKey, events: int) -> int:
        """0 if ``events`` may pass now, else the whole seconds to put in ``Retry-After``."""
        if key.rate_limit is None:
            return 0
        bucket = self._buckets.get(key.key_id)
        if bucket is None or int(bucket.rate) != key.rate_limit:
            bucket = self._buckets[key.key_id] = TokenBucket(key.rate_limit)
        wait = bucket.take(events)
        return 0 if wait == 0 else max(1, math.ceil(wait))

    async def keep_fresh(self, database_url: str, every: float, stop: asyncio.Event) -> None:
        """Refresh on every NOTIFY and every ``every`` seconds until ``stop``."""
        listener: asyncpg.Connection | None = None
        try:
            while not stop.is_set():
                if listener is None or listener.is_closed():
                    listener = await self._listen(database_url)
                try:
                    await self.refresh()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("write key refresh failed", error=str(exc))
                self._changed.clear()
                waiters = {
                    asyncio.ensure_future(stop.wait()),
                    asyncio.ensure_future(self._changed.wait()),
                }
                try:
                    await asyncio.wait(waiters, timeout=every, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waiters:
                        w.cancel()
        finally:
            if listener is not None and not listener.is_closed():
                await listener.close(timeout=2)

    async def _listen(self, database_url: str) -> asyncpg.Connection | None:
        try:
            conn: asyncpg.Connection = await asyncpg.connect(database_url)
            await conn.add_listener(CHANNEL, lambda *_: self._changed.set())
            return conn
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("cannot listen for write key changes", error=str(exc))
            return None
