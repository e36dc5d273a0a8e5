"""Stopping a journey: drain keeps instances running; exit_all sends every affected profile an
ExitInstances into its partition."""

from __future__ import annotations

import json

import asyncpg
import nats
import pytest
from nats.js.client import JetStreamContext

from cairn_common.messages import ExitInstances, decode
from cairn_common.partitioning import partition_for
from cairn_common.topology import Topology
from cairn_control.errors import Unavailable
from cairn_control.stop import stop_journey
from tests.conftest import Servers
from tests.control.conftest import PARTITIONS, Admin
from tests.control.test_lifecycle import documents


async def _live_welcome_with_instances(admin: Admin) -> None:
    await admin.apply_text(documents())
    await admin.ready_all_templates()
    status, body = await admin.call("POST", "/v1/journeys/welcome/publish")
    assert status == 200, body
    rows = [
        ("i1", "welcome", "alice", "active"),
        ("i2", "welcome", "alice", "active"),  # two instances (unique_by), one profile
        ("i3", "welcome", "bob", "active"),
        ("i4", "welcome", "carol", "completed"),  # already over: nothing to exit
        ("i5", "other", "dave", "active"),  # another journey
    ]
    await admin.pool.executemany(
        "INSERT INTO journey_instances (instance_id, journey, version, profile_id, status, "
        "started_at) VALUES ($1, $2, 1, $3, $4, now())",
        rows,
    )


async def _inputs(js: JetStreamContext, topology: Topology) -> list[tuple[str, object]]:
    info = await js.stream_info(topology.inputs_stream)
    if info.state.messages == 0:
        return []
    sub = await js.pull_subscribe(f"{topology.namespace}.inputs.>", stream=topology.inputs_stream)
    msgs = await sub.fetch(info.state.messages, timeout=5)
    await sub.unsubscribe()
    return [(m.subject, decode(m.data)) for m in msgs]


async def test_stop_drain_takes_no_new_entries_and_leaves_running_instances(
    admin: Admin, js: JetStreamContext, topology: Topology
) -> None:
    await _live_welcome_with_instances(admin)
    status, body = await admin.call("POST", "/v1/journeys/welcome/stop", {"mode": "drain"})
    assert status == 200, body
    assert (body["mode"], body["profiles_exited"]) == ("drain", 0)
    row = await admin.pool.fetchrow("SELECT state, stop_mode FROM journeys WHERE name = 'welcome'")
    assert (row["state"], row["stop_mode"]) == ("stopped", "drain")
    assert await _inputs(js, topology) == []


async def test_stop_exit_all_sends_exit_instances_to_each_profile_with_an_active_instance(
    admin: Admin, js: JetStreamContext, topology: Topology
) -> None:
    await _live_welcome_with_instances(admin)
    status, body = await admin.call("POST", "/v1/journeys/welcome/stop", {"mode": "exit_all"})
    assert status == 200, body
    assert (body["mode"], body["profiles_exited"]) == ("exit_all", 2)

    sent = await _inputs(js, topology)
    expected = {
        (topology.input_subject(partition_for(p, PARTITIONS), "control"),
         ExitInstances(profile_id=p, partition=partition_for(p, PARTITIONS), journey="welcome",
                       reason="stopped"))
        for p in ("alice", "bob")
    }  # fmt: skip
    assert set(sent) == expected
    assert len(sent) == 2, "one message per profile, whatever its number of instances"


async def test_stop_exit_all_again_resends_without_duplicating_inside_the_dedupe_window(
    admin: Admin, js: JetStreamContext, topology: Topology
) -> None:
    await _live_welcome_with_instances(admin)
    await admin.call("POST", "/v1/journeys/welcome/stop", {"mode": "exit_all"})
    status, body = await admin.call("POST", "/v1/journeys/welcome/stop", {"mode": "exit_all"})
    assert status == 200, body
    assert len(await _inputs(js, topology)) == 2


async def test_stop_notifies_matchers_and_a_stopped_journey_can_be_published_again(
    admin: Admin,
) -> None:
    await _live_welcome_with_instances(admin)
    heard: list[str] = []
    conn = await asyncpg.connect(admin.database_url)
    try:
        await conn.add_listener("cairn_journeys", lambda *args: heard.append(args[3]))
        await admin.call("POST", "/v1/journeys/welcome/stop", {"mode": "drain"})
        await conn.execute("SELECT 1")
    finally:
        await conn.close()
    assert [json.loads(p) for p in heard] == [
        {"journey": "welcome", "action": "stop", "mode": "drain"}
    ]
    status, body = await admin.call("POST", "/v1/journeys/welcome/publish")
    assert status == 200, body
    assert (body["version"], body["outcome"]) == (1, "resumed")
    _, listed = await admin.call("GET", "/v1/journeys")
    assert [(j["state"], j["live_version"]) for j in listed["journeys"]] == [("live", 1)]


async def test_stop_refuses_a_journey_never_published_and_a_bad_mode(admin: Admin) -> None:
    await admin.apply_text(documents())
    status, body = await admin.call("POST", "/v1/journeys/welcome/stop", {"mode": "drain"})
    assert (status, body["code"]) == (409, "conflict")
    status, body = await admin.call("POST", "/v1/journeys/welcome/stop", {"mode": "later"})
    assert (status, body["code"]) == (422, "invalid")
    assert "mode" in body["message"]


async def test_exit_all_that_cannot_reach_nats_says_to_run_it_again(
    admin: Admin, servers: Servers, topology: Topology
) -> None:
    await _live_welcome_with_instances(admin)
    client = await nats.connect(servers.nats_url)
    unreachable = client.jetstream()
    await client.close()
    with pytest.raises(Unavailable, match="Run the same stop --exit-all again"):
        await stop_journey(
            admin.pool, unreachable, topology, "welcome", "exit_all", partitions=PARTITIONS
        )
    state = await admin.pool.fetchval("SELECT state FROM journeys WHERE name = 'welcome'")
    assert state == "stopped", "the stop itself is committed: no new entries"
