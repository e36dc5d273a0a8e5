"""Test helpers: set timers the way the matcher does, and read what the scheduler fired."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
from nats.js.client import JetStreamContext

from cairn_common.db import apply_migrations
from cairn_common.messages import TimerFired, decode
from cairn_common.topology import Topology


async def migrated(database_url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(database_url)
    await apply_migrations(conn)
    return conn


async def set_timers(
    conn: asyncpg.Connection, due: Sequence[datetime], *, prefix: str = "tm", notify: bool = True
) -> list[str]:
    """Insert one timer per due time (as the matcher's commit does), NOTIFY-ing the earliest."""
    ids = [f"{prefix}-{n}" for n in range(len(due))]
    async with conn.transaction():
        await conn.executemany(
            "INSERT INTO timers (timer_id, profile_id, partition, instance_id, step_id, kind, "
            "due_at) VALUES ($1, $2, $3, $4, 'wait-1', 'wait', $5)",
            [
                (i, f"p-{n}", n % 4, f"in-{n}", d)
                for n, (i, d) in enumerate(zip(ids, due, strict=True))
            ],
        )
        if notify and due:
            await conn.execute("SELECT pg_notify('cairn_timers', $1)", min(due).isoformat())
    return ids


def soon(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


class Fires:
    """Everything that arrived on the timer subjects of the inputs stream (after JetStream's
    dedupe), read through an ephemeral consumer."""

    def __init__(self, js: JetStreamContext, topology: Topology) -> None:
        self._js = js
        self._topology = topology
        self.seen: list[tuple[str, TimerFired]] = []

    async def start(self) -> Fires:
        self._sub = await self._js.pull_subscribe(
            f"{self._topology.namespace}.inputs.*.timer", stream=self._topology.inputs_stream
        )
        return self

    async def poll(self) -> None:
        try:
            msgs = await self._sub.fetch(500, timeout=0.2)
        except TimeoutError:
            return
        for m in msgs:
            fired = decode(m.data)
            assert isinstance(fired, TimerFired)
            self.seen.append((m.subject, fired))
            await m.ack()

    async def until(self, count: int, timeout: float = 30.0) -> list[tuple[str, TimerFired]]:
        async with asyncio.timeout(timeout):
            while len(self.seen) < count:
                await self.poll()
        return self.seen

    def ids(self) -> list[str]:
        return [f.timer_id for _, f in self.seen]


async def table_count(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM timers")
    return count
