"""Gauges the matcher samples from PostgreSQL for /metrics.

``cairn_journey_instances{journey, status}`` counts journey instances by status (active,
completed, exited). Every matcher replica reads the same table, so only the replica that holds
partition 0 reports it (a dashboard can sum over replicas); the others clear it.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import structlog
from prometheus_client import Gauge

from cairn_common.waiting import wait_any
from cairn_matcher.leases import PartitionLeases

log = structlog.get_logger(__name__)

INSTANCES = Gauge(
    "cairn_journey_instances",
    "Journey instances by journey and status, sampled (reported by one matcher replica)",
    ["journey", "status"],
)
TRANSIENT = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


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
        except TRANSIENT as exc:
            log.warning("cannot count journey instances", error=repr(exc))
        else:
            for (journey, status), n in counts.items():
                INSTANCES.labels(journey, status).set(n)
            for key in shown - set(counts):
                with contextlib.suppress(KeyError):
                    INSTANCES.remove(*key)
            shown = set(counts)
        await wait_any(stop, timeout=interval)
