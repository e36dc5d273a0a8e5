"""Exactly-once effects over crashes: SIGKILL the matcher or the scheduler at random moments while
a workload runs, restart it, and the run ends as a crash-free run ends — the same instance end
states, every delivery request there, none twice. And three matchers, one killed for good.

The workload is built so that its crash-free outcome does not depend on timing: each profile's
events are published together, so they precede in its partition every timer fire they cause
(fires come a second later). ``test_crash_free_run`` pins that outcome; the crash tests must
reach the very same one.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from nats.js.client import JetStreamContext

from cairn_common.topology import Topology
from tests.support.engine import Deliveries, Inputs, metric, prepared, publish_journey
from tests.support.processes import ServiceProcess

P = 6
PROFILES = 24
MATCHER_ENV = {
    "CAIRN_PARTITIONS": str(P),
    "CAIRN_LEASE_TTL_SECONDS": "2",
    "CAIRN_LEASE_RENEW_SECONDS": "0.5",
    "CAIRN_FETCH_BATCH": "16",
    "CAIRN_OUTBOX_RELAY_AFTER_SECONDS": "1",
}
SCHEDULER_ENV = {"CAIRN_PARTITIONS": str(P), "CAIRN_CLAIM_GRACE_SECONDS": "1"}

PHONE, TOKEN = "profile.phone", "profile.token"
CART: dict[str, Any] = {
    "kind": "Journey",
    "name": "cart",
    "trigger": {"event": "Cart Abandoned"},
    "entry": {"repeat": "always", "unique_by": "cart_id"},
    "exit": [{"event": "Order Completed", "match": "cart_id"}],
    "steps": [
        {"id": "email", "send": {"channel": "email", "template": "t", "to": "profile.email"}},
        {
            "id": "opened",
            "wait_for": {
                "event": "Email Opened",
                "of": "email",
                "within": "1s",
                "timed_out": [
                    {
                        "id": "sms",
                        "send": {"channel": "sms", "template": "t", "to": "profile.phone"},
                    },
                    {"id": "pause", "wait": "1s"},
                    {
                        "id": "push",
                        "send": {"channel": "push", "template": "t", "to": "profile.token"},
                    },
                ],
            },
        },
    ],
}


def expected() -> tuple[dict[tuple[str, str], str], Counter[tuple[str, str, str]]]:
    """The crash-free outcome: even profiles complete cart a and exit it at once; every cart b
    runs its whole course."""
    statuses: dict[tuple[str, str], str] = {}
    sends: Counter[tuple[str, str, str]] = Counter()
    for n in range(PROFILES):
        pid = f"u{n}"
        if n % 2 == 0:
            statuses[(pid, "a")] = "exited"
            sends[(pid, "a", "email")] += 1
        else:
            statuses[(pid, "a")] = "completed"
            sends.update((pid, "a", s) for s in ("email", "sms", "push"))
        statuses[(pid, "b")] = "completed"
        sends.update((pid, "b", s) for s in ("email", "sms", "push"))
    return statuses, sends


async def workload(inputs: Inputs, rng: random.Random) -> None:
    for n in range(PROFILES):
        pid = f"u{n}"
        await inputs.identify(pid, email=f"{pid}@example.com", phone="+1555", token=f"t-{pid}")
        await inputs.send(pid, "Cart Abandoned", properties={"cart_id": "a"})
        await inputs.send(pid, "Cart Abandoned", properties={"cart_id": "b"})
        if n % 2 == 0:
            await inputs.send(pid, "Order Completed", properties={"cart_id": "a"})
        await asyncio.sleep(rng.uniform(0.02, 0.12))


async def outcome(
    pool: asyncpg.Pool, deliveries: Deliveries
) -> tuple[dict[tuple[str, str], str], Counter[tuple[str, str, str]]]:
    total = 2 * PROFILES
    async with asyncio.timeout(90):
        while (
            await pool.fetchval("SELECT count(*) FROM journey_instances WHERE status <> 'active'")
            < total
        ):
            await asyncio.sleep(0.2)
    await deliveries.settle(quiet=2.0)
    rows = await pool.fetch("SELECT profile_id, unique_value, status FROM journey_instances")
    assert len(rows) == total, "one instance per cart, none duplicated by a replay"
    statuses = {(r["profile_id"], r["unique_value"]): r["status"] for r in rows}
    ids = Counter(d.delivery_id for d in deliveries.seen)
    assert max(ids.values()) == 1, "no delivery request emitted twice"
    sends = Counter((d.profile_id, d.unique_value or "", d.step_id) for d in deliveries.seen)
    assert await pool.fetchval("SELECT count(*) FROM timers") == 0
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    return statuses, sends


async def setup(
    js: JetStreamContext, topology: Topology, database_url: str
) -> tuple[asyncpg.Pool, Inputs, Deliveries]:
    pool = await prepared(database_url, js, topology)
    await publish_journey(pool, CART)
    return pool, Inputs(js, topology, P), await Deliveries(js, topology, P).start()


async def test_crash_free_run(
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    pool, inputs, deliveries = await setup(js, topology, database_url)
    procs = [spawn("cairn_matcher", **MATCHER_ENV), spawn("cairn_scheduler", **SCHEDULER_ENV)]
    await asyncio.gather(*(p.wait_ready() for p in procs))
    await workload(inputs, random.Random(1))
    assert await outcome(pool, deliveries) == expected()
    await pool.close()


@pytest.mark.parametrize("victim", ["cairn_matcher", "cairn_scheduler"])
async def test_sigkill_at_random_moments_and_restart_ends_as_a_crash_free_run(
    victim: str,
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    pool, inputs, deliveries = await setup(js, topology, database_url)
    env = {"cairn_matcher": MATCHER_ENV, "cairn_scheduler": SCHEDULER_ENV}
    other = "cairn_scheduler" if victim == "cairn_matcher" else "cairn_matcher"
    await spawn(other, **env[other]).wait_ready()
    proc = spawn(victim, **env[victim])
    await proc.wait_ready()

    async def kill_and_restart() -> None:
        nonlocal proc
        for _ in range(3):
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            proc.kill()
            await proc.wait_exit()
            proc = spawn(victim, **env[victim])
            await proc.wait_ready()

    await asyncio.gather(workload(inputs, rng), kill_and_restart())
    assert await outcome(pool, deliveries) == expected()
    await pool.close()


async def test_three_matchers_one_killed_for_good_end_as_a_crash_free_run(
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    pool, inputs, deliveries = await setup(js, topology, database_url)
    matchers = [spawn("cairn_matcher", **MATCHER_ENV) for _ in range(3)]
    scheduler = spawn("cairn_scheduler", **SCHEDULER_ENV)
    await asyncio.gather(scheduler.wait_ready(), *(m.wait_ready() for m in matchers))
    async with asyncio.timeout(30):  # each replica holds its fair share before the kill
        while sorted(
            [await metric(m.health_url, "cairn_matcher_owned_partitions") for m in matchers]
        ) != [2, 2, 2]:
            await asyncio.sleep(0.1)

    async def kill_one() -> None:
        await asyncio.sleep(1.0)
        matchers[1].kill()

    await asyncio.gather(workload(inputs, random.Random(7)), kill_one())
    assert await outcome(pool, deliveries) == expected()
    await pool.close()
