"""The inputs stream is bounded, and the bound is on the backlog, not on history: real ingest and
matcher processes, real NATS and PostgreSQL, an inputs stream of 1 MiB.

When nothing drains the stream, a full stream refuses new events (discard ``new``): ingest
answers 503 ``backlog_full`` and loses nothing, keeping what it stored of a batch so a retry adds
only the rest. When the matcher runs, it trims what it has committed, so many times the bound
flows through.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from nats.js.client import JetStreamContext

from cairn_cli.local import free_port
from cairn_common.topology import MIB, Topology
from tests.conftest import STREAM_LIMITS
from tests.ingest.conftest import stored_events
from tests.support.engine import prepared
from tests.support.keys import new_write_key
from tests.support.processes import ServiceProcess

BOUND = {"CAIRN_INPUTS_MAX_BYTES": str(MIB), "CAIRN_PARTITIONS": "4"}
FILLER = "x" * 20_000  # ~20 KB an event: about fifty fill the stream


@pytest.fixture
def topology(namespace: str) -> Topology:
    return Topology(namespace, **{**STREAM_LIMITS, "inputs_max_bytes": MIB})


def identifies(first: int, count: int) -> list[dict[str, Any]]:
    return [
        {"type": "identify", "userId": f"u{i}", "messageId": f"m{i}", "traits": {"note": FILLER}}
        for i in range(first, first + count)
    ]


async def start_ingest(
    spawn: Callable[..., ServiceProcess], database_url: str
) -> aiohttp.ClientSession:
    _, key = await new_write_key(database_url, "shop")
    port = free_port()
    proc = spawn("cairn_ingest", CAIRN_HTTP_PORT=str(port), CAIRN_TRACKING_SECRET="s", **BOUND)
    await proc.wait_ready()
    auth = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
    return aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}", headers=auth)


async def post(
    http: aiohttp.ClientSession, batch: list[dict[str, Any]]
) -> tuple[int, Any, str | None]:
    async with http.post("/v1/batch", json={"batch": batch}) as resp:
        return resp.status, await resp.json(), resp.headers.get("Retry-After")


async def test_a_full_inputs_stream_is_a_503_that_loses_nothing(
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    (await prepared(database_url, js, topology)).terminate()
    http = await start_ingest(spawn, database_url)
    async with http:
        sent: list[dict[str, Any]] = []
        for n in range(0, 200, 10):
            batch = identifies(n, 10)
            sent += batch
            status, body, retry_after = await post(http, batch)
            if status != 200:
                break
        else:
            pytest.fail("a 1 MiB stream took 4 MB of events")
        assert status == 503, body
        assert body["code"] == "backlog_full"
        assert "CAIRN_INPUTS_MAX_BYTES" in body["message"]
        assert retry_after is not None
        stored = await stored_events(js, topology)
        assert 0 < len(stored) < len(sent)
        # What did fit is kept; nothing is lost, nothing is stored twice.
        assert [e.message_id for e in stored] == [m["messageId"] for m in sent[: len(stored)]]

        # The matcher would trim what it has committed; here the test makes the room itself.
        await js.purge_stream(topology.inputs_stream)
        assert (await post(http, batch))[0] == 200
        retried = await stored_events(js, topology)
    ids = [e.message_id for e in stored + retried]
    assert sorted(ids) == sorted(m["messageId"] for m in sent), "each event exactly once"


async def test_the_matcher_trims_what_it_committed_so_many_times_the_bound_flows(
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    pool = await prepared(database_url, js, topology)
    matcher = spawn("cairn_matcher", CAIRN_INPUTS_TRIM_SECONDS="0.2", **BOUND)
    await matcher.wait_ready()
    http = await start_ingest(spawn, database_url)
    total, refused = 250, 0  # ~5 MB through a 1 MiB stream
    async with http, asyncio.timeout(120):
        for n in range(0, total, 10):
            while True:
                status, body, _ = await post(http, identifies(n, 10))
                if status == 200:
                    break
                assert (status, body["code"]) == (503, "backlog_full"), body
                refused += 1
                await asyncio.sleep(0.2)  # a Segment client backs off and retries
        while await pool.fetchval("SELECT count(*) FROM profiles") < total:
            await asyncio.sleep(0.1)
    info = await js.stream_info(topology.inputs_stream)
    assert info.state.bytes <= MIB
    assert info.config.max_bytes == MIB
    # A filtered purge leaves gaps in the sequence, so count rather than read every sequence.
    assert info.state.messages < total, "committed inputs were trimmed from the stream"
    await pool.close()
    print(f"refused (and retried) {refused} batches of {total // 10}")
