"""The shared send schedule behind ``rate_limit`` (``cairn_common.rates``, migration 0009).

Each limited key has one row in ``send_rates`` holding the first free slot. A batch reserves,
per key, as many consecutive slots as it has sends under that key, in one locked update: the
schedule starts no earlier than ``now - tolerance`` (the burst) and every slot is ``spacing``
after the one before, so the slots of all replicas together never come closer than the limit
allows. A send whose slot is due goes now; a later one is deferred until its slot. Times are
the database's, so replicas on different clocks share one schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import asyncpg

from cairn_common.rates import RateLimit

_RESERVE = """
INSERT INTO send_rates AS r (key, next_at)
VALUES ($1::text, now() - make_interval(secs => $3::float8)
                  + make_interval(secs => $2::int * $4::float8))
ON CONFLICT (key) DO UPDATE
SET next_at = greatest(r.next_at, now() - make_interval(secs => $3::float8))
              + make_interval(secs => $2::int * $4::float8)
RETURNING next_at - make_interval(secs => $2::int * $4::float8) AS first, now() AS db_now
"""


class SendRates:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def reserve(
        self, wanted: Sequence[tuple[str, RateLimit, int]]
    ) -> tuple[dict[str, list[datetime]], datetime | None]:
        """For each (key, limit, count): ``count`` consecutive slots of the key's schedule, in
        order; and the database's ``now`` to compare them with. Keys are taken in sorted order
        (two replicas reserving the same keys never deadlock)."""
        slots: dict[str, list[datetime]] = {}
        db_now: datetime | None = None
        if not wanted:
            return slots, db_now
        async with self._pool.acquire() as conn, conn.transaction():
            for key, limit, count in sorted(wanted, key=lambda w: w[0]):
                row = await conn.fetchrow(_RESERVE, key, count, limit.tolerance, limit.spacing)
                assert row is not None
                step = timedelta(seconds=limit.spacing)
                slots[key] = [row["first"] + i * step for i in range(count)]
                db_now = row["db_now"]
        return slots, db_now
