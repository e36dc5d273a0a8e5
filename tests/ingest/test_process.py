"""Ingest as a real process: NATS request/reply ingestion, and SIGKILL under load loses nothing
that was answered 200."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NATS

from tests.ingest.conftest import Ingest

pytestmark = pytest.mark.e2e


async def test_nats_request_reply_ingestion_answers_like_the_http_api(
    ingest_process: Callable[..., Any], nc: NATS, namespace: str
) -> None:
    ingest: Ingest = await ingest_process()
    key = {"Cairn-Write-Key": ingest.write_key}
    track = {"userId": "u1", "event": "Signed Up", "properties": {"plan": "pro"}}
    subject = f"{namespace}.ingest"
    reply = await nc.request(f"{subject}.track", json.dumps(track).encode(), 10, headers=key)
    assert json.loads(reply.data) == {"success": True}
    assert reply.headers is not None
    assert reply.headers["Cairn-Status"] == "200"

    batch = {"batch": [{"type": "identify", "userId": "u1", "traits": {"a": 1}}, {"type": "x"}]}
    reply = await nc.request(f"{subject}.batch", json.dumps(batch).encode(), 10, headers=key)
    body = json.loads(reply.data)
    assert (body["accepted"], [r["index"] for r in body["rejected"]]) == (1, [1])

    reply = await nc.request(f"{namespace}.ingest.track", json.dumps(track).encode(), 10)
    assert json.loads(reply.data)["code"] == "missing_write_key"
    assert reply.headers is not None
    assert reply.headers["Cairn-Status"] == "401"

    events = await ingest.events(2)
    assert [(e.type, e.source) for e in events] == [("track", "nats"), ("identify", "nats")]
    assert events[0].properties == {"plan": "pro"}


def basic(ingest: Ingest) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{ingest.write_key}:".encode()).decode()}


class Load:
    """Four clients posting 20-event batches with fresh messageIds until the server goes away."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.acknowledged: list[str] = []
        self.unanswered: list[list[dict[str, Any]]] = []
        self.statuses: set[int] = set()
        self.enough = asyncio.Event()

    async def run(self, stop_server: Callable[[], None]) -> None:
        async with aiohttp.ClientSession() as http:
            clients = [asyncio.create_task(self._client(n, http)) for n in range(4)]
            await self.enough.wait()
            stop_server()
            await asyncio.gather(*clients)

    async def _client(self, n: int, http: aiohttp.ClientSession) -> None:
        for i in range(10_000):
            batch = [
                {"type": "track", "userId": f"u{j}", "event": "Load", "messageId": f"{n}-{i}-{j}"}
                for j in range(20)
            ]
            try:
                async with http.post(
                    self.ingest.url + "/v1/batch", json={"batch": batch}, headers=basic(self.ingest)
                ) as resp:
                    await resp.read()
                    self.statuses.add(resp.status)
                    if resp.status != 200:
                        self.unanswered.append(batch)
                        continue
                    self.acknowledged.extend(m["messageId"] for m in batch)
                    if len(self.acknowledged) >= 600:
                        self.enough.set()
            except aiohttp.ClientError:
                self.unanswered.append(batch)
                return


async def test_sigkill_under_load_loses_nothing_that_was_answered_200(
    ingest_process: Callable[..., Any],
) -> None:
    ingest: Ingest = await ingest_process()
    assert ingest.proc is not None
    load = Load(ingest)
    await load.run(ingest.proc.kill)

    stored = {e.message_id for e in await ingest.events(len(load.acknowledged))}
    assert set(load.acknowledged) <= stored
    assert load.unanswered  # the kill really hit requests in flight

    # The clients retry what was never answered against a new replica, with the same write key
    # (a messageId is unique within its source): each event once.
    retry: Ingest = await ingest_process()
    async with aiohttp.ClientSession() as http:
        for batch in load.unanswered:
            async with http.post(
                retry.url + "/v1/batch", json={"batch": batch}, headers=basic(ingest)
            ) as resp:
                assert resp.status == 200
    expected = set(load.acknowledged) | {m["messageId"] for b in load.unanswered for m in b}
    events = await ingest.events(len(expected))
    assert sorted(e.message_id for e in events) == sorted(expected)


async def test_sigterm_under_load_answers_what_it_took_and_exits_cleanly(
    ingest_process: Callable[..., Any],
) -> None:
    ingest: Ingest = await ingest_process()
    assert ingest.proc is not None
    load = Load(ingest)
    await load.run(ingest.proc.terminate)
    assert await ingest.proc.wait_exit() == 0
    assert load.statuses <= {200, 503}  # in flight: answered, never cut off mid-request
    stored = {e.message_id for e in await ingest.events(len(load.acknowledged))}
    assert set(load.acknowledged) <= stored
