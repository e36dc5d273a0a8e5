"""Input that cannot be stored downstream is refused at the edge with Segment's error contract
(a 400 naming the JSON path), and never harms the valid events sent with it (issue 10: a NUL in a
trait stalled a matcher partition; nesting 2,000 levels deep got a plain-text 500; a batch's
context was merged into every event after the size check)."""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.ingest.conftest import InProcessFactory
from tests.ingest.test_tracking_api import post


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        ("/v1/identify", {"userId": "x", "traits": {"nick": "a\u0000b"}}, "traits.nick"),
        ("/v1/track", {"userId": "x", "event": "E", "properties": {"p": ["ok", "\u0000"]}},
         "properties.p[1]"),
        ("/v1/identify", {"userId": "x", "traits": {"email": "ann@example.com\u0000"}},
         "traits.email"),
        ("/v1/track", {"userId": "a\u0000b", "event": "E"}, "userId"),
        ("/v1/track", {"userId": "x", "event": "E", "properties": {"k\u0000": 1}}, "key"),
    ],
)  # fmt: skip
async def test_a_nul_anywhere_is_refused_with_its_path(
    in_process: InProcessFactory, http: aiohttp.ClientSession, path: str, body: dict, named: str
) -> None:
    ingest = await in_process()
    status, reply, _ = await post(http, ingest, path, body)
    assert status == 400
    assert reply["code"] == "invalid_event"
    assert named in reply["message"]
    assert "NUL" in reply["message"]
    assert await ingest.count() == 0


async def test_an_unpaired_surrogate_is_refused(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    raw = b'{"userId":"x","event":"E","properties":{"name":"\\ud800"}}'
    status, reply, _ = await post(http, ingest, "/v1/track", raw)
    assert (status, reply["code"]) == (400, "invalid_event")
    assert "\\ud800" in reply["message"]
    assert "surrogate" in reply["message"]
    paired = b'{"userId":"x","event":"E","properties":{"name":"\\ud83d\\ude00"}}'
    status, _, _ = await post(http, ingest, "/v1/track", paired)
    assert status == 200
    [event] = await ingest.events(1)
    assert event.properties == {"name": "\U0001f600"}


async def test_deep_nesting_is_a_400_and_its_batch_neighbours_are_kept(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    deep = b'{"type":"track","userId":"x","event":"E","properties":' + _nested(2000) + b"}"
    status, reply, _ = await post(http, ingest, "/v1/track", deep)
    assert (status, reply["code"]) == (400, "invalid_event")
    assert "deeper than 64" in reply["message"]

    moderately = json.dumps(
        {"type": "track", "userId": "x", "event": "E", "properties": json.loads(_nested(70))}
    ).encode()
    good = json.dumps({"type": "track", "userId": "neighbour", "event": "Fine"}).encode()
    batch = b'{"batch":[' + deep + b"," + good + b"," + moderately + b"]}"
    status, reply, _ = await post(http, ingest, "/v1/batch", batch)
    assert status == 200
    assert reply["accepted"] == 1
    assert [r["index"] for r in reply["rejected"]] == [0, 2]
    assert all("deeper than 64" in r["message"] for r in reply["rejected"])
    [event] = await ingest.events(1)
    assert (event.profile_id, event.event) == ("neighbour", "Fine")


async def test_a_nested_batch_envelope_is_a_json_400_not_a_500(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    body = b'{"batch":[],"context":' + _nested(2000) + b"}"
    status, reply, _ = await post(http, ingest, "/v1/batch", body)
    assert (status, reply["code"]) == (400, "invalid_batch")


async def test_the_size_limit_counts_the_batch_context_merged_into_each_event(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    context = {"pad": "x" * 20_000}
    small = {"type": "track", "userId": "x", "event": "E", "properties": {"p": "y" * 15_000}}
    tiny = {"type": "track", "userId": "neighbour", "event": "Fine"}
    body = {"batch": [small, tiny], "context": context}
    status, reply, _ = await post(http, ingest, "/v1/batch", body)
    assert status == 200
    assert reply["accepted"] == 1
    [rejected] = reply["rejected"]
    assert (rejected["index"], rejected["code"]) == (0, "event_too_large")
    assert "as stored" in rejected["message"]
    [event] = await ingest.events(1)
    assert event.profile_id == "neighbour"
    assert event.context["pad"] == context["pad"]


async def test_a_batch_with_a_nul_keeps_its_valid_events(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    body = {
        "batch": [
            {"type": "identify", "userId": "x", "traits": {"nick": "a\u0000b"}},
            {"type": "identify", "userId": "neighbour", "traits": {"nick": "ok"}},
        ]
    }
    status, reply, _ = await post(http, ingest, "/v1/batch", body)
    assert status == 200
    assert reply["accepted"] == 1
    assert "traits.nick" in reply["rejected"][0]["message"]
    [event] = await ingest.events(1)
    assert event.traits == {"nick": "ok"}


async def test_a_deep_cloudevent_in_a_batch_is_refused_alone(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    deep = (
        b'{"specversion":"1.0","id":"1","source":"s","type":"Deep","subject":"x","data":'
        + _nested(2000)
        + b"}"
    )
    good = b'{"specversion":"1.0","id":"2","source":"s","type":"Fine","subject":"neighbour"}'
    status, reply, _ = await post(
        http,
        ingest,
        "/v1/cloudevents",
        b"[" + deep + b"," + good + b"]",
        headers={"Content-Type": "application/cloudevents-batch+json"},
    )
    assert status == 200
    assert reply["accepted"] == 1
    assert [r["index"] for r in reply["rejected"]] == [0]
    [event] = await ingest.events(1)
    assert (event.profile_id, event.event) == ("neighbour", "Fine")
