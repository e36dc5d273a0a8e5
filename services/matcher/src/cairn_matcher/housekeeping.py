"""Work one matcher replica does for all: the one that holds partition 0.

- ``cairn_journey_instances{journey, status}`` counts journey instances by status (active,
  completed, exited), sampled from PostgreSQL for /metrics. Every replica reads the same table, so
  only one reports it (a dashboard can sum over replicas); the others clear it.
- ``delivery_events`` rows older than ``CAIRN_DELIVERY_EVENTS_RETENTION_DAYS`` are deleted, a
  chunk at a time. They only dedupe: the funnel's counters stay. After that many days a repeated
  result or a first open of a very old email would count again.

And work each replica does for its own partitions:

- the inputs of each partition it owns are purged from the inputs stream below the partition's
  committed sequence (``partition_leases.last_applied_seq``): their effects are in PostgreSQL and
  a new owner starts after that sequence, so nothing will read them again. The stream refuses
  new inputs when full (see cairn_common.topology); trimming makes "full" mean "a backlog the
  matcher has not committed", never "a week of history".
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import structlog
from nats.js.client import JetStreamContext
from prometheus_client import Counter, Gauge

from cairn_common.failures import describe, is_transient
from cairn_common.topology import Topology
from cairn_common.waiting import wait_any
from cairn_matcher.leases import PartitionLeases

log = structlog.get_logger(__name__)

INSTANCES = Gauge(
    "cairn_journey_instances",
    "Journey instances by journey and status, sampled (reported by one matcher replica)",
    ["journey", "status"],
)


async def count_instances(pool: asyncpg.Pool) -> dict[tuple[str, str], int]:
    rows = await pool.fetch(
        "SELECT journey, status, count(*) AS n FROM journey_instances GROUP BY 1, 2"
    )
    return {(r["journey"], r["status"]): int(r["n"]) for r in rows}


async def sample_instances(
    pool: asyncpg.Pool, leases: PartitionLeases, stop: asyncio.Event, *, interval: float
) -> None:
    shown: set[tuple[str, str]] = set()
    while not stop.is_set():
        try:
            counts = await count_instances(pool) if 0 in leases.held else {}
        except Exception as exc:  # a gauge must never take the matcher down
            if is_transient(exc):
                log.warning("cannot count journey instances", error=describe(exc))
            else:
                log.exception("counting journey instances failed")
        else:
            for (journey, status), n in counts.items():
                INSTANCES.labels(journey, status).set(n)
            for key in shown - set(counts):
                with contextlib.suppress(KeyError):
                    INSTANCES.remove(*key)
            shown = set(counts)
        await wait_any(stop, timeout=interval)


PRUNED = Gauge(
    "cairn_matcher_delivery_events_pruned",
    "delivery_events rows deleted by the last retention pass (past their dedupe window)",
)


async def prune_delivery_events(pool: asyncpg.Pool, *, days: float, chunk: int = 10_000) -> int:
    """Delete rows older than ``days``, ``chunk`` rows per transaction; returns how many."""
    total = 0
    while True:
        status: str = await pool.execute(
            """DELETE FROM delivery_events WHERE ctid = ANY(ARRAY(
                   SELECT ctid FROM delivery_events
                   WHERE at < now() - make_interval(secs => $1) LIMIT $2))""",
            days * 86400.0,
            chunk,
        )
        deleted = int(status.split()[-1])
        total += deleted
        if deleted < chunk:
            return total


async def prune_regularly(
    pool: asyncpg.Pool,
    leases: PartitionLeases,
    stop: asyncio.Event,
    *,
    days: float,
    interval: float = 3600.0,
) -> None:
    while not stop.is_set():
        if 0 in leases.held:
            try:
                PRUNED.set(await prune_delivery_events(pool, days=days))
            except Exception as exc:  # housekeeping must never take the matcher down
                if is_transient(exc):
                    log.warning("cannot prune delivery_events", error=describe(exc))
                else:
                    log.exception("pruning delivery_events failed")
        await wait_any(stop, timeout=interval)


TRIMMED = Counter(
    "cairn_matcher_input_trims_total",
    "Purges of committed inputs from the inputs stream, one per partition that advanced",
)


class InputTrimmer:
    """Purges each owned partition's committed inputs from the inputs stream."""

    def __init__(
        self,
        js: JetStreamContext,
        pool: asyncpg.Pool,
        topology: Topology,
        leases: PartitionLeases,
    ) -> None:
        self._js = js
        self._pool = pool
        self._topology = topology
        self._leases = leases
        self._trimmed: dict[int, int] = {}
        """partition -> the sequence below which it was last purged."""

    async def trim(self) -> int:
        """One pass; returns how many partitions were purged."""
        owned = sorted(self._leases.held)
        if not owned:
            return 0
        rows = await self._pool.fetch(
            """SELECT partition, last_applied_seq FROM partition_leases
               WHERE partition = ANY($1::int[]) AND last_applied_seq > 0""",
            owned,
        )
        purged = 0
        for row in rows:
            p, below = row["partition"], row["last_applied_seq"] + 1
            if self._trimmed.get(p, 0) >= below:
                continue
            await self._js.purge_stream(
                self._topology.inputs_stream, seq=below, subject=self._topology.partition_filter(p)
            )
            self._trimmed[p] = below
            purged += 1
        TRIMMED.inc(purged)
        return purged

    async def run(self, stop: asyncio.Event, *, interval: float) -> None:
        while not stop.is_set():
            await wait_any(stop, timeout=interval)
            if stop.is_set():
                return
            try:
                await self.trim()
            except Exception as exc:  # housekeeping must never take the matcher down
                if is_transient(exc):
                    log.warning("cannot trim committed inputs", error=describe(exc))
                else:
                    log.exception("trimming committed inputs failed")
