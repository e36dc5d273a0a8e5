"""The scheduler as a real process: timers in PostgreSQL fire once, into their profile's
partition, never early, across replicas, restarts and crashes."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from nats.js.client import JetStreamContext

from cairn_common.bus import provision_topology
from cairn_common.topology import Topology
from tests.scheduler.timers import Fires, migrated, set_timers, soon, table_count
from tests.support.engine import metric
from tests.support.processes import ServiceProcess

SCHEDULER = "cairn_scheduler"
CANCELLED = "cairn_scheduler_timers_cancelled_before_fire_total"


async def test_due_timers_fire_once_into_their_partition_and_never_early(
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    await provision_topology(js, topology)
    conn = await migrated(database_url)
    due = [soon(0.5 + n * 0.05) for n in range(40)] + [soon(600)]
    ids = await set_timers(conn, due)
    fires = await Fires(js, topology).start()

    proc = spawn(SCHEDULER, CAIRN_LOOKAHEAD_SECONDS="2")
    await proc.wait_ready()
    seen = await fires.until(40)

    assert sorted(fires.ids()) == sorted(ids[:40]), "each due timer fired exactly once"
    for subject, fired in seen:
        assert subject == topology.input_subject(fired.partition, "timer")
        assert fired.fired_at >= fired.due_at, "a timer never fires before it is due"
    assert await table_count(conn) == 1, "fired timers are deleted; the far one still waits"
    await conn.close()


async def test_a_near_timer_committed_after_start_is_picked_up_by_notify(
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    await provision_topology(js, topology)
    conn = await migrated(database_url)
    fires = await Fires(js, topology).start()
    # The periodic scan is an hour apart: only the NOTIFY can make this timer fire.
    proc = spawn(SCHEDULER, CAIRN_RESCAN_SECONDS="3600")
    await proc.wait_ready()
    await asyncio.sleep(0.5)  # let the first scan (an empty table) pass
    ids = await set_timers(conn, [soon(0.3)])

    await fires.until(1, timeout=15)
    assert fires.ids() == ids
    await conn.close()


async def test_a_timer_cancelled_after_it_was_claimed_does_not_fire(
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    await provision_topology(js, topology)
    conn = await migrated(database_url)
    ids = await set_timers(conn, [soon(8.0), soon(8.5)])
    fires = await Fires(js, topology).start()
    proc = spawn(SCHEDULER, CAIRN_LOOKAHEAD_SECONDS="30")
    await proc.wait_ready()
    async with asyncio.timeout(10):
        while await conn.fetchval("SELECT count(*) FROM timers WHERE claimed_by IS NOT NULL") < 2:
            await asyncio.sleep(0.05)
    await conn.execute("DELETE FROM timers WHERE timer_id = $1", ids[0])  # the matcher cancels

    await fires.until(1)
    async with asyncio.timeout(10):
        while (
            await metric(proc.health_url, "cairn_scheduler_timers_cancelled_before_fire_total") < 1
        ):
            await asyncio.sleep(0.05)
    await fires.poll()
    assert fires.ids() == [ids[1]], "only the timer still set fired"
    await conn.close()


async def test_two_replicas_share_the_timers_and_fire_each_once(
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    await provision_topology(js, topology)
    conn = await migrated(database_url)
    env = {"CAIRN_LOOKAHEAD_SECONDS": "1", "CAIRN_CLAIM_BATCH": "20"}
    replicas = [spawn(SCHEDULER, **env), spawn(SCHEDULER, **env)]
    await asyncio.gather(*(r.wait_ready() for r in replicas))
    ids = await set_timers(conn, [soon(1.0 + n * 0.01) for n in range(400)])
    fires = await Fires(js, topology).start()

    await fires.until(400)

    async def fired() -> list[float]:
        return [await metric(r.health_url, "cairn_scheduler_timers_fired_total") for r in replicas]

    async with asyncio.timeout(10):  # a replica counts a fire once its timer is deleted
        while sum(await fired()) < 400:
            await asyncio.sleep(0.1)
    counts = await fired()
    assert sum(counts) == 400, f"published once in all, not once per replica: {counts}"
    assert sorted(fires.ids()) == sorted(ids)
    assert await table_count(conn) == 0
    await conn.close()


async def test_sigkill_mid_way_and_restart_loses_no_timer_and_fires_none_twice(
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    await provision_topology(js, topology)
    conn = await migrated(database_url)
    ids = await set_timers(conn, [soon(0.5 + n * 0.004) for n in range(1000)])
    fires = await Fires(js, topology).start()
    env = {"CAIRN_LOOKAHEAD_SECONDS": "5", "CAIRN_CLAIM_GRACE_SECONDS": "1"}
    first = spawn(SCHEDULER, **env)
    await first.wait_ready()
    await fires.until(200)
    first.kill()  # claimed, partly fired, some published but not yet deleted
    await first.wait_exit()

    second = spawn(SCHEDULER, **env)
    await second.wait_ready()
    await fires.until(1000)
    await asyncio.sleep(0.5)
    await fires.poll()

    counts = Counter(fires.ids())
    assert set(counts) == set(ids), "no timer lost"
    assert max(counts.values()) == 1, "none delivered twice"
    async with asyncio.timeout(10):
        while await table_count(conn):
            await asyncio.sleep(0.05)
    await conn.close()


async def test_sigterm_hands_back_claims_of_timers_not_yet_due(
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    await provision_topology(js, topology)
    conn = await migrated(database_url)
    await set_timers(conn, [soon(30), soon(40)])
    proc = spawn(SCHEDULER, CAIRN_LOOKAHEAD_SECONDS="60")
    await proc.wait_ready()
    async with asyncio.timeout(10):
        while await conn.fetchval("SELECT count(*) FROM timers WHERE claimed_by IS NOT NULL") < 2:
            await asyncio.sleep(0.05)

    proc.terminate()
    assert await proc.wait_exit() == 0
    claimed = await conn.fetchval("SELECT count(*) FROM timers WHERE claimed_by IS NOT NULL")
    assert claimed == 0, "another replica can fire them at once, without waiting for expiry"
    assert await table_count(conn) == 2
    await conn.close()


async def test_a_restarted_replica_of_the_same_name_fires_its_claimed_timers_without_waiting(
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    """SIGKILLed with timers claimed, restarted under its name (a container restart keeps the
    pod name): the claims are taken back at start, not after the 60 s grace."""
    await provision_topology(js, topology)
    conn = await migrated(database_url)
    ids = await set_timers(conn, [soon(3 + n * 0.01) for n in range(50)])
    fires = await Fires(js, topology).start()
    env = {
        "CAIRN_LOOKAHEAD_SECONDS": "10",
        "CAIRN_CLAIM_GRACE_SECONDS": "60",
        "CAIRN_REPLICA_ID": "scheduler-0",
    }
    first = spawn(SCHEDULER, **env)
    await first.wait_ready()
    async with asyncio.timeout(10):
        while await conn.fetchval("SELECT count(*) FROM timers WHERE claimed_by IS NOT NULL") < 50:
            await asyncio.sleep(0.05)
    first.kill()  # every timer claimed, none due yet
    await first.wait_exit()

    second = spawn(SCHEDULER, **env)
    await second.wait_ready()
    async with asyncio.timeout(20):
        await fires.until(50)
    assert Counter(fires.ids()) == Counter(ids)
    await conn.close()


async def test_a_fire_the_stream_refused_says_so_when_it_gets_in(
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    """While the inputs stream refuses writes (full here; electing a leader or restarting in
    the fault runs) the scheduler retries its fires. The one that gets in says it came through
    an outage (``after_outage``), so a ``wait_for`` window waits for inputs still on their way
    (decision 0065); a fire the stream took at once does not."""
    await provision_topology(js, topology)
    conn = await migrated(database_url)
    fires = await Fires(js, topology).start()
    proc = spawn(SCHEDULER)
    await proc.wait_ready()
    [first] = await set_timers(conn, [soon(0.2)], prefix="on-time")
    await fires.until(1, timeout=15)

    stream = topology.inputs_stream
    await js.publish(topology.input_subject(0, "event"), b"{}", stream=stream)
    info = await js.stream_info(stream)
    config = info.config
    config.max_msgs = info.state.messages  # full: every publish is refused
    await js.update_stream(config)
    [second] = await set_timers(conn, [soon(0.2)], prefix="refused")
    async with asyncio.timeout(15):
        while "firing timers failed; will retry" not in proc.output():
            await asyncio.sleep(0.1)
    config.max_msgs = -1
    await js.update_stream(config)

    seen = {fired.timer_id: fired for _, fired in await fires.until(2, timeout=15)}
    assert not seen[first].after_outage
    assert seen[second].after_outage
    await conn.close()
