"""The matcher as real processes, before any journey is published: identify traits are stored,
every partition is owned by exactly one live replica, and a dead replica's partitions are taken
over with nothing lost."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import asyncpg
from nats.js.client import JetStreamContext

from cairn_common.messages import decode
from cairn_common.topology import Topology
from tests.support.engine import Inputs, prepared, wait_for_rows
from tests.support.processes import ServiceProcess

MATCHER = "cairn_matcher"
P = 4
FAST_LEASES = {
    "CAIRN_PARTITIONS": str(P),
    "CAIRN_LEASE_TTL_SECONDS": "2",
    "CAIRN_LEASE_RENEW_SECONDS": "0.5",
}


async def owners(pool: asyncpg.Pool) -> dict[int, str | None]:
    rows = await pool.fetch(
        "SELECT partition, owner FROM partition_leases WHERE expires_at > now() ORDER BY 1"
    )
    return {r["partition"]: r["owner"] for r in rows}


async def test_identify_traits_are_merged_into_the_profile_later_keys_winning(
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    pool = await prepared(database_url, js, topology)
    inputs = Inputs(js, topology, P)
    await inputs.identify("ann", email="ann@example.com", plan="free")
    await inputs.send("ann", "Page Viewed")  # no journey references it: nothing but a skip
    await inputs.identify("ann", plan="pro", timezone="Europe/Paris")

    proc = spawn(MATCHER, CAIRN_PARTITIONS=str(P))
    await proc.wait_ready()
    await wait_for_rows(
        pool, "SELECT count(*) FROM profiles WHERE traits->>'plan' = 'pro'", expect=1
    )
    traits = await pool.fetchval("SELECT traits::text FROM profiles WHERE profile_id = 'ann'")
    assert '"email": "ann@example.com"' in traits
    assert '"timezone": "Europe/Paris"' in traits
    assert await pool.fetchval("SELECT count(*) FROM profile_states") == 0, (
        "events no journey references cost no state"
    )
    await pool.close()


async def test_a_killed_replicas_partitions_are_taken_over_and_no_input_is_lost(
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    pool = await prepared(database_url, js, topology)
    a = spawn(MATCHER, CAIRN_REPLICA_ID="a", **FAST_LEASES)
    b = spawn(MATCHER, CAIRN_REPLICA_ID="b", **FAST_LEASES)
    await asyncio.gather(a.wait_ready(), b.wait_ready())
    async with asyncio.timeout(30):
        while sorted((await owners(pool)).values()) != ["a", "a", "b", "b"]:
            await asyncio.sleep(0.1)

    b.kill()
    await b.wait_exit()
    inputs = Inputs(js, topology, P)
    for n in range(40):
        await inputs.identify(f"user-{n}", n=n)

    await wait_for_rows(pool, "SELECT count(*) FROM profiles", expect=40)
    assert set((await owners(pool)).values()) == {"a"}, "the survivor owns every partition"
    epochs = await pool.fetch("SELECT partition, epoch FROM partition_leases ORDER BY 1")
    assert all(r["epoch"] >= 1 for r in epochs)
    await pool.close()


async def test_a_clean_stop_hands_partitions_to_the_other_replica_at_once(
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    pool = await prepared(database_url, js, topology)
    # Leases that would take a minute to expire: only the hand-back can explain a quick takeover.
    slow = {**FAST_LEASES, "CAIRN_LEASE_TTL_SECONDS": "60", "CAIRN_LEASE_RENEW_SECONDS": "0.5"}
    a = spawn(MATCHER, CAIRN_REPLICA_ID="a", **slow)
    b = spawn(MATCHER, CAIRN_REPLICA_ID="b", **slow)
    await asyncio.gather(a.wait_ready(), b.wait_ready())
    async with asyncio.timeout(30):
        while sorted((await owners(pool)).values()) != ["a", "a", "b", "b"]:
            await asyncio.sleep(0.1)

    b.terminate()
    assert await b.wait_exit() == 0
    inputs = Inputs(js, topology, P)
    for n in range(20):
        await inputs.identify(f"user-{n}", n=n)
    await wait_for_rows(pool, "SELECT count(*) FROM profiles", expect=20, timeout=20)
    assert set((await owners(pool)).values()) == {"a"}
    await pool.close()


async def test_poison_inputs_are_dead_lettered_with_the_reason_and_the_partition_goes_on(
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    pool = await prepared(database_url, js, topology)
    inputs = Inputs(js, topology, P)
    first = await inputs.identify("ivy", plan="free")
    subject = topology.input_subject(first.partition, "event")
    await js.publish(subject, b"{not json", headers={"Nats-Msg-Id": "junk-1"})
    partial = b'{"msg_type": "event", "type": "track"}'
    await js.publish(subject, partial, headers={"Nats-Msg-Id": "junk-2"})
    await inputs.identify("ivy", plan="pro")
    letters = await js.pull_subscribe(
        f"{topology.namespace}.dlq.>", stream=topology.dead_letter_stream
    )

    proc = spawn(MATCHER, CAIRN_PARTITIONS=str(P))
    await proc.wait_ready()
    await wait_for_rows(
        pool, "SELECT count(*) FROM profiles WHERE traits->>'plan' = 'pro'", expect=1
    )
    got = await letters.fetch(2, timeout=10)
    reasons = sorted(decode(m.data).reason for m in got)  # type: ignore[union-attr]
    assert len(reasons) == 2
    assert all(r.startswith("undecodable message") for r in reasons), reasons
    assert any("missing required field" in r for r in reasons), "it names what is wrong"
    await pool.close()


async def test_committed_inputs_are_acknowledged_at_the_latest_once_the_partition_is_idle(
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    """A busy worker acknowledges every second or so, not every batch; what it committed last
    is acknowledged once nothing more arrives, so JetStream never redelivers committed work."""
    pool = await prepared(database_url, js, topology)
    proc = spawn(MATCHER, CAIRN_PARTITIONS=str(P))
    await proc.wait_ready()
    inputs = Inputs(js, topology, P)
    for n in range(60):
        await inputs.identify(f"user-{n}", n=n)
    await wait_for_rows(pool, "SELECT count(*) FROM profiles", expect=60)

    async with asyncio.timeout(15):
        while True:
            consumers = [
                c
                for c in await js.consumers_info(topology.inputs_stream)
                if c.name.startswith("matcher-")
            ]
            if len(consumers) == P and all(c.num_ack_pending == 0 for c in consumers):
                break
            await asyncio.sleep(0.2)
    assert sum(c.delivered.stream_seq > 0 for c in consumers) == P, "every partition had inputs"
    await pool.close()


async def test_deliveries_lost_on_the_way_are_fetched_again_not_skipped(
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    """A delivery the server counts as sent but the worker never got (the connection dropped
    under it: a NATS restart) leaves a gap in the consumer's sequence. The worker must not
    commit past it (acknowledging all before, the lost input would be skipped for good); it
    rebinds from its commit and applies the lost input first. Reproduced here by another client
    taking one delivery from the worker's consumer while the worker is paused."""
    pool = await prepared(database_url, js, topology)
    proc = spawn(MATCHER, CAIRN_PARTITIONS="1")
    await proc.wait_ready()
    inputs = Inputs(js, topology, 1)
    await inputs.identify("ann", step=0)
    await wait_for_rows(pool, "SELECT count(*) FROM profiles", expect=1)
    (consumer,) = [
        c.name for c in await js.consumers_info(topology.inputs_stream)
        if c.name.startswith("matcher-")
    ]  # fmt: skip
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(1.5)  # the worker's pending pull request expires
        await inputs.identify("ann", email="ann@example.com")
        thief = await js.pull_subscribe_bind(durable=consumer, stream=topology.inputs_stream)
        (stolen,) = await thief.fetch(1, timeout=5)  # delivered, never reaches the worker
        assert b"ann@example.com" in stolen.data
        await inputs.identify("ann", plan="pro")
    finally:
        proc.proc.send_signal(signal.SIGCONT)
    await wait_for_rows(
        pool, "SELECT count(*) FROM profiles WHERE traits->>'plan' = 'pro'", expect=1
    )
    traits = await pool.fetchval("SELECT traits::text FROM profiles WHERE profile_id = 'ann'")
    assert '"email": "ann@example.com"' in traits, traits
    assert "deliveries lost on the way" in proc.output()
    await pool.close()
