"""The scheduler's SQL: claim the timers coming due, check which still exist, delete fired ones.

A claim is ``claimed_by``/``claimed_until`` on the row, taken with ``FOR UPDATE SKIP LOCKED`` so
replicas never claim the same timers at once. ``claimed_until`` is the due time (or now, for an
overdue timer) plus a grace period: if the claiming replica dies before firing, the timer is
claimed again by another replica once that passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg
import msgspec


class DueTimer(msgspec.Struct, frozen=True):
    timer_id: str
    profile_id: str
    partition: int
    instance_id: str
    step_id: str
    kind: str
    due_at: datetime
    traceparent: str | None = None
    """The trace that set the timer; its fire links to it."""
    refused: bool = False
    """Its fire was refused by the stream at least once (``TimerFired.after_outage``)."""


async def claim_due(
    conn: asyncpg.Connection,
    replica: str,
    *,
    after: datetime | None,
    until: datetime,
    grace: float,
    limit: int,
) -> list[DueTimer]:
    """Claim unclaimed (or abandoned) timers due in ``(after, until]``, earliest first.

    ``after`` lets a scan skip the part of the window already claimed, whose rows the index walk
    would otherwise step over one by one (up to every timer held in memory)."""
    rows = await conn.fetch(
        """UPDATE timers AS t
           SET claimed_by = $1,
               claimed_until = greatest(t.due_at, now()) + make_interval(secs => $4)
           FROM (SELECT timer_id FROM timers
                 WHERE due_at > coalesce($2::timestamptz, '-infinity') AND due_at <= $3
                   AND (claimed_until IS NULL OR claimed_until < now())
                 ORDER BY due_at
                 LIMIT $5
                 FOR UPDATE SKIP LOCKED) AS due
           WHERE t.timer_id = due.timer_id
           RETURNING t.timer_id, t.profile_id, t.partition, t.instance_id, t.step_id, t.kind,
                     t.due_at, t.traceparent""",
        replica, after, until, grace, limit,
    )  # fmt: skip
    return [DueTimer(*r) for r in rows]


async def still_set(conn: asyncpg.Connection, timer_ids: Sequence[str]) -> set[str]:
    """The ids among ``timer_ids`` not cancelled meanwhile (the matcher deletes a cancelled one)."""
    rows = await conn.fetch("SELECT timer_id FROM timers WHERE timer_id = ANY($1)", timer_ids)
    return {r["timer_id"] for r in rows}


async def delete_fired(conn: asyncpg.Connection, timer_ids: Sequence[str]) -> None:
    await conn.execute("DELETE FROM timers WHERE timer_id = ANY($1)", timer_ids)


async def release_claims(conn: asyncpg.Connection, replica: str) -> int:
    """On a clean stop: hand back unfired claims so another replica fires them without waiting."""
    status: str = await conn.execute(
        "UPDATE timers SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = $1", replica
    )
    return int(status.split()[-1])


async def count_pending(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM timers")
    return count
