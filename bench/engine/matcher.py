"""Benchmark (a): journey-triggering events per second from JetStream to delivery request, with
one matcher process; then p99 event-to-delivery-request latency at half that rate. Also (b), the
matcher part: RSS and PostgreSQL size with every triggered instance left waiting on a timer.

Phase 1 puts ``--backlog`` trigger events in the inputs stream, starts the matcher, and times the
drain (first to last delivery request stored). Phase 2 publishes at ``--rate`` (default: half the
measured throughput) for ``--seconds`` and measures, per event, JetStream store time of its
delivery request minus the event's publish time; it reads the requests once it has published
them all (``--read-concurrently`` reads them meanwhile), so on a 2-core machine its own client
does not take CPU from the matcher while the latency is measured (the dispatcher, which reads
them in production, runs elsewhere). The journey sends an email, then waits a day.

    uv run python bench/engine/matcher.py [--backlog 20000] [--rate N] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import nats
from rig import Rig, deadlocks, percentile, rig, rss_mb  # type: ignore[import-not-found]

from cairn_common.bus import MSG_ID, provision_topology
from cairn_common.db import apply_migrations
from cairn_common.messages import DeliveryRequested, Event, decode, encode
from cairn_common.partitioning import partition_for
from cairn_common.topology import Topology
from tests.support.engine import publish_journey

PARTITIONS = 64
EMAIL = "event.properties.email"
JOURNEY = {
    "kind": "Journey",
    "name": "cart",
    "trigger": {"event": "Cart Abandoned"},
    "entry": {"repeat": "always", "unique_by": "cart_id"},
    "exit": [{"event": "Order Completed", "match": "cart_id"}],
    "steps": [
        {
            "id": "email",
            "send": {"channel": "email", "template": "t", "to": "event.properties.email"},
        },
        {"id": "pause", "wait": "1d"},
        {"id": "push", "send": {"channel": "push", "template": "t", "to": "profile.token"}},
    ],
}


PROFILES = [50_000]


def trigger(topology: Topology, n: int, run: str) -> tuple[str, bytes, str]:
    pid = f"user-{n % PROFILES[0]}"
    cart = f"{run}-{n}"
    now = datetime.now(UTC)
    partition = partition_for(pid, PARTITIONS)
    ev = Event(
        message_id=uuid.uuid4().hex, type="track", profile_id=pid, user_id=pid,
        partition=partition, received_at=now, timestamp=now, event="Cart Abandoned",
        properties={"cart_id": cart, "cart_value": 42, "email": f"{pid}@example.com"},
    )  # fmt: skip
    return topology.input_subject(partition, "event"), encode(ev), ev.message_id


async def publish_many(js: Any, items: list[tuple[str, bytes, str]]) -> None:
    futures = [await js.publish_async(s, d, headers={MSG_ID: m}) for s, d, m in items]
    await asyncio.gather(*futures)


async def drain(sub: Any, count: int, timeout: float) -> list[tuple[DeliveryRequested, datetime]]:
    got: list[tuple[DeliveryRequested, datetime]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        try:
            msgs = await sub.fetch(1000, timeout=1.0)
        except TimeoutError:
            continue
        for m in msgs:
            request = decode(m.data)
            assert isinstance(request, DeliveryRequested)
            got.append((request, m.metadata.timestamp))
            await m.ack()
    return got


async def main(
    r: Rig,
    backlog: int,
    rate: int | None,
    seconds: float,
    committers: int,
    read_concurrently: bool = False,
) -> None:
    topology = Topology(r.namespace)
    nc = await nats.connect(r.nats.url)
    js = nc.jetstream()
    await provision_topology(js, topology)
    sub = await js.pull_subscribe_bind(  # as the dispatcher takes them
        durable=topology.dispatcher_consumer, stream=topology.deliveries_stream
    )
    pool = await asyncpg.create_pool(r.database_url, min_size=1, max_size=2)
    async with pool.acquire() as conn:
        await apply_migrations(conn)
    await publish_journey(pool, JOURNEY)

    items = [trigger(topology, n, "backlog") for n in range(backlog)]
    for i in range(0, backlog, 2000):
        await publish_many(js, items[i : i + 2000])
    print(f"phase 1: {backlog:,} trigger events waiting in JetStream")
    deadlocks_before = await deadlocks(r.database_url)
    proc = r.spawn(
        "cairn_matcher", CAIRN_PARTITIONS=str(PARTITIONS), CAIRN_COMMITTERS=str(committers)
    )
    await proc.wait_ready()
    assert proc.proc is not None
    print(f"matcher pid {proc.proc.pid}", flush=True)
    got = await drain(sub, backlog, timeout=600)
    stored = sorted(t for _, t in got)
    span = (stored[-1] - stored[0]).total_seconds()
    throughput = len(got) / span
    print(f"  {len(got):,} delivery requests in {span:.1f}s = {throughput:,.0f} events/s "
          f"(matcher RSS {rss_mb(proc):.0f} MB)")  # fmt: skip

    rate = rate or max(100, int(throughput / 2))
    total = int(rate * seconds)
    print(f"phase 2: {rate:,} events/s for {seconds:.0f}s")
    sent_at: dict[str, datetime] = {}

    async def produce() -> None:
        tick = 0.02
        per_tick = max(1, int(rate * tick))
        start = time.monotonic()
        n = 0
        while n < total:
            count = min(per_tick, total - n)
            batch = [trigger(topology, backlog + n + k, "steady") for k in range(count)]
            for _, data, _ in batch:
                ev = decode(data)
                assert isinstance(ev, Event)
                sent_at[ev.properties["cart_id"]] = ev.received_at
            await publish_many(js, batch)
            n += count
            await asyncio.sleep(max(0.0, start + (n / rate) - time.monotonic()))

    if read_concurrently:
        results, _ = await asyncio.gather(drain(sub, total, timeout=seconds + 120), produce())
    else:  # the store times are what is measured, whenever they are read
        await produce()
        results = await drain(sub, total, timeout=120)
    latency = [(t - sent_at[d.unique_value or ""]).total_seconds() * 1000 for d, t in results]
    print(f"  {len(results):,}/{total:,} delivered; event -> delivery request latency "
          f"p50 {percentile(latency, 50):.1f} ms  p99 {percentile(latency, 99):.1f} ms  "
          f"max {max(latency):.1f} ms")  # fmt: skip

    async with aiohttp.ClientSession() as http, http.get(f"{proc.health_url}/metrics") as resp:
        text = await resp.text()
    values = {
        line.split()[0]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(("cairn_matcher_batch_seconds_", "cairn_matcher_commit_inputs_"))
    }
    commits = values.get("cairn_matcher_batch_seconds_count", 0.0)
    if commits:
        mean = values["cairn_matcher_batch_seconds_sum"] / commits
        inputs = values["cairn_matcher_commit_inputs_sum"] / commits
        print(f"  {commits:,.0f} group commits, {mean * 1000:.1f} ms and {inputs:.1f} inputs each")
    waiting = await pool.fetchval("SELECT count(*) FROM journey_instances WHERE status='active'")
    sizes = await pool.fetchrow(
        """SELECT pg_total_relation_size('profile_states') AS states,
                  pg_total_relation_size('journey_instances') AS instances,
                  pg_total_relation_size('timers') AS timers,
                  pg_database_size(current_database()) AS db"""
    )
    print(
        f"(b) {waiting:,} instances waiting on timers: matcher RSS {rss_mb(proc):.0f} MB; "
        f"PostgreSQL {sizes['db'] / 1e6:,.0f} MB (states {sizes['states'] / 1e6:,.0f}, "
        f"instances {sizes['instances'] / 1e6:,.0f}, timers {sizes['timers'] / 1e6:,.0f})"
    )
    proc.stop()  # its backends exit and report their counters
    found = await deadlocks(r.database_url) - deadlocks_before
    print(f"  PostgreSQL deadlocks during the run (pg_stat_database.deadlocks delta): {found}")
    await pool.close()
    await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-fsync", action="store_true", help="PostgreSQL without fsync")
    parser.add_argument("--profiles", type=int, default=50_000, help="distinct profiles")
    parser.add_argument("--committers", type=int, default=4, help="CAIRN_COMMITTERS")
    parser.add_argument(
        "--read-concurrently",
        action="store_true",
        help="phase 2 reads the delivery requests while publishing (the bench's own client then"
        " takes CPU from the matcher on a small machine)",
    )
    args = parser.parse_args()
    PROFILES[0] = args.profiles
    with rig(fsync=not args.no_fsync) as r:
        asyncio.run(
            main(
                r,
                args.backlog,
                args.rate,
                args.seconds,
                args.committers,
                args.read_concurrently,
            )
        )
