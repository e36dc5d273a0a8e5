"""Benchmark (b), scheduler part: 1,000,000 timers waiting in PostgreSQL, of which 100,000 come
due within the same 10 seconds; then 100,000 due at the same instant (burst).

Prints the table size, fire lateness p50/p99/max (publish time minus due time, as written in each
TimerFired, and JetStream store time minus due time) and fires per second. One scheduler process,
loopback only; stops by itself.

    uv run python bench/engine/timers.py [--total 1000000] [--due 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import nats
from nats.js import api
from rig import Rig, percentile, rig, rss_mb  # type: ignore[import-not-found]

from cairn_common.bus import provision_topology
from cairn_common.db import apply_migrations
from cairn_common.messages import TimerFired, decode
from cairn_common.topology import Topology

EXTRA: list[str] = []


async def insert_far(conn: asyncpg.Connection, count: int) -> None:
    await conn.execute(
        """INSERT INTO timers (timer_id, profile_id, partition, instance_id, step_id, kind, due_at)
           SELECT 'far-' || g, 'p-' || g, g % 64, 'in-' || g, 'wait-1', 'wait',
                  now() + interval '1 day' + g * interval '1 second'
           FROM generate_series(1, $1) AS g""",
        count,
    )


async def insert_due(
    conn: asyncpg.Connection, prefix: str, count: int, start: datetime, spread: float
) -> None:
    await conn.execute(
        """INSERT INTO timers (timer_id, profile_id, partition, instance_id, step_id, kind, due_at)
           SELECT $1 || g, 'p-' || g, g % 64, 'in-' || g, 'wait-1', 'wait',
                  $3::timestamptz + (g::float8 / $2) * make_interval(secs => $4)
           FROM generate_series(1, $2) AS g""",
        prefix, count, start, spread,
    )  # fmt: skip


async def subscribe(js: Any, topology: Topology) -> Any:
    return await js.pull_subscribe(
        f"{topology.namespace}.inputs.*.timer",
        stream=topology.inputs_stream,
        config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE),
    )


async def collect(sub: Any, count: int, timeout: float) -> list[tuple[Any, ...]]:
    got: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        try:
            msgs = await sub.fetch(2000, timeout=1.0)
        except TimeoutError:
            continue
        for m in msgs:
            fired = decode(m.data)
            assert isinstance(fired, TimerFired)
            got.append((fired.due_at, fired.fired_at, m.metadata.timestamp))
    return got


def report(label: str, got: list[tuple[Any, ...]], expected: int) -> None:
    late_pub = [(f - d).total_seconds() * 1000 for d, f, _ in got]
    late_store = [(s - d).total_seconds() * 1000 for d, _, s in got]
    first = min(f for _, f, _ in got)
    last = max(f for _, f, _ in got)
    span = (last - first).total_seconds()
    print(f"{label}: fired {len(got)}/{expected} over {span:.2f}s = {len(got) / span:,.0f} fires/s")
    for name, vals in (("publish", late_pub), ("stored ", late_store)):
        print(f"  lateness ({name}) p50 {percentile(vals, 50):7.1f} ms   "
              f"p99 {percentile(vals, 99):7.1f} ms   max {max(vals):7.1f} ms")  # fmt: skip


async def main(r: Rig, total: int, due: int) -> None:
    topology = Topology(r.namespace)
    nc = await nats.connect(r.nats.url)
    js = nc.jetstream()
    await provision_topology(js, topology)
    conn = await asyncpg.connect(r.database_url)
    await apply_migrations(conn)
    t = time.perf_counter()
    await insert_far(conn, total - due)
    print(f"inserted {total - due:,} far timers in {time.perf_counter() - t:.1f}s")
    await conn.execute("VACUUM ANALYZE timers")

    sub = await subscribe(js, topology)
    proc = r.spawn("cairn_scheduler", **dict(a.split("=", 1) for a in EXTRA))
    await proc.wait_ready()
    assert proc.proc is not None
    print(f"scheduler pid {proc.proc.pid}", flush=True)

    start = datetime.now(UTC) + timedelta(seconds=8)
    await insert_due(conn, "spread-", due, start, 10.0)
    size = await conn.fetchval("SELECT pg_total_relation_size('timers')")
    print(f"{total:,} timers waiting: table+indexes {size / 1e6:,.0f} MB "
          f"({size / total:,.0f} bytes/timer); scheduler RSS {rss_mb(proc):.0f} MB")  # fmt: skip
    got = await collect(sub, due, timeout=90)
    report(f"{due:,} due within 10 s", got, due)
    print(f"  scheduler RSS after: {rss_mb(proc):.0f} MB")

    burst = datetime.now(UTC) + timedelta(seconds=8)
    await insert_due(conn, "burst-", due, burst, 0.0)
    got = await collect(sub, due, timeout=90)
    report(f"{due:,} due at the same instant", got, due)

    await conn.close()
    await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--total", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=100_000)
    parser.add_argument("--env", action="append", default=[], help="CAIRN_X=V for the scheduler")
    args = parser.parse_args()
    EXTRA.extend(args.env)
    with rig() as r:
        asyncio.run(main(r, args.total, args.due))
