"""The Segment-compatible Tracking API over raw HTTP: what a client sees for each input, and what
reaches JetStream."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from cairn_common.partitioning import partition_for
from tests.ingest.conftest import Ingest, InProcessFactory


def auth(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


async def post(
    http: aiohttp.ClientSession,
    ingest: Ingest,
    path: str,
    body: Any,
    *,
    key: str | None = "default",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(
        ingest.url + path,
        data=data,
        headers={
            "Content-Type": "application/json",
            **(auth(ingest.write_key if key == "default" else key) if key else {}),
            **(headers or {}),
        },
    ) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_track_call_is_stored_as_a_canonical_event(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process(partitions=16)
    status, body, _ = await post(
        http,
        ingest,
        "/v1/track",
        {"userId": "u1", "event": "Cart Abandoned", "properties": {"cart_value": 30}},
    )
    assert (status, body) == (200, {"success": True})
    [event] = await ingest.events(1)
    assert event.type == "track"
    assert event.event == "Cart Abandoned"
    assert event.profile_id == "u1"
    assert event.partition == partition_for("u1", 16)
    assert event.properties == {"cart_value": 30}
    assert event.write_key == ingest.key_id
    assert event.message_id  # generated when absent


async def test_every_call_type_and_short_path_is_accepted(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    calls = [
        ("/v1/identify", {"userId": "u1", "traits": {"email": "a@example.com"}}),
        ("/v1/page", {"anonymousId": "a1", "name": "Home", "category": "Docs"}),
        ("/v1/screen", {"userId": "u1", "name": "Cart"}),
        ("/v1/group", {"userId": "u1", "groupId": "g1", "traits": {"plan": "pro"}}),
        ("/v1/alias", {"userId": "u1", "previousId": "a1"}),
        ("/v1/t", {"userId": 42, "event": "Short Path"}),
    ]
    for path, body in calls:
        status, reply, _ = await post(http, ingest, path, body)
        assert (status, reply) == (200, {"success": True}), path
    events = await ingest.events(len(calls))
    assert [e.type for e in events] == ["identify", "page", "screen", "group", "alias", "track"]
    assert events[0].traits == {"email": "a@example.com"}
    assert events[1].profile_id == "a1"
    assert events[1].properties == {"category": "Docs"}
    assert events[3].group_id == "g1"
    assert events[4].previous_id == "a1"
    assert events[5].profile_id == "42"


async def test_write_key_in_the_body_is_accepted(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    body = {"writeKey": ingest.write_key, "userId": "u1", "event": "Body Key"}
    status, _, _ = await post(http, ingest, "/v1/track", body, key=None)
    assert status == 200
    one = {"type": "track", "userId": "u", "event": "E"}
    batch = {"writeKey": ingest.write_key, "batch": [one]}
    status, _, _ = await post(http, ingest, "/v1/batch", batch, key=None)
    assert status == 200


async def test_timestamps_are_corrected_for_client_clock_skew(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    # The client's clock is a day fast: the event happened 10 s before it was sent.
    sent_at = datetime.now(UTC) + timedelta(days=1)
    happened = sent_at - timedelta(seconds=10)
    body = {
        "userId": "u1",
        "event": "Skewed",
        "timestamp": happened.isoformat(),
        "sentAt": sent_at.isoformat(),
    }
    assert (await post(http, ingest, "/v1/track", body))[0] == 200
    [event] = await ingest.events(1)
    assert event.received_at - event.timestamp == timedelta(seconds=10)
    assert event.sent_at == sent_at


async def test_gzip_and_deflate_bodies_are_accepted(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    body = json.dumps({"batch": [{"type": "track", "userId": "u", "event": "Zipped"}]}).encode()
    for encoding, data in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        status, _, _ = await post(
            http, ingest, "/v1/batch", data, headers={"Content-Encoding": encoding}
        )
        assert status == 200, encoding
    assert [e.event for e in await ingest.events(2)] == ["Zipped", "Zipped"]


async def test_a_batch_keeps_valid_events_and_lists_the_rejected_ones(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    batch = [
        {"type": "track", "userId": "u1", "event": "Good 1"},
        {"type": "track", "userId": "u1"},  # no event name
        {"type": "track", "event": "Nobody"},  # no user
        {"type": "launch", "userId": "u1"},  # unknown type
        {"type": "track", "userId": "u1", "event": "Big", "properties": {"x": "y" * 40_000}},
        {"type": "track", "userId": "u1", "event": "Good 2", "timestamp": "yesterday"},
        [1, 2],
        {"type": "track", "userId": "u1", "event": "Good 3"},
    ]
    status, body, _ = await post(http, ingest, "/v1/batch", {"batch": batch})
    assert status == 200
    assert body["success"] is True
    assert body["accepted"] == 2
    rejected = {r["index"]: r for r in body["rejected"]}
    assert sorted(rejected) == [1, 2, 3, 4, 5, 6]
    assert "event is required" in rejected[1]["message"]
    assert "userId or anonymousId" in rejected[2]["message"]
    assert "launch" in rejected[3]["message"]
    assert rejected[4]["code"] == "event_too_large"
    assert "timestamp" in rejected[5]["message"]
    assert [e.event for e in await ingest.events(2)] == ["Good 1", "Good 3"]


ERROR_CASES: list[tuple[str, Any, str | None, int, str]] = [
    ("/v1/track", {"userId": "u", "event": "E"}, None, 401, "missing_write_key"),
    ("/v1/track", {"userId": "u", "event": "E"}, "wrong", 401, "invalid_write_key"),
    ("/v1/track", b"{not json", "default", 400, "malformed_json"),
    ("/v1/track", {"event": "E"}, "default", 400, "invalid_event"),
    ("/v1/track", {"userId": "u"}, "default", 400, "invalid_event"),
    ("/v1/track", {"userId": "u", "event": "E", "properties": [1]}, "default", 400,
     "invalid_event"),
    ("/v1/alias", {"userId": "u"}, "default", 400, "invalid_event"),
    ("/v1/group", {"userId": "u"}, "default", 400, "invalid_event"),
    ("/v1/track", {"userId": "u", "event": "E", "p": "x" * 33_000}, "default", 413,
     "event_too_large"),
    ("/v1/batch", {"batch": "nope"}, "default", 400, "invalid_batch"),
    ("/v1/batch", [1], "default", 400, "invalid_batch"),
    ("/v1/batch", {"batch": [{"type": "track"}]}, "default", 400, "invalid_batch"),
    ("/v1/batch", {"batch": [{"type": "track", "userId": "u", "event": "E"}] * 2501},
     "default", 413, "too_many_events"),
    ("/v1/batch", {"batch": [{"p": "x" * 30_000}] * 18}, "default", 413, "batch_too_large"),
    ("/v1/launch", {"userId": "u"}, "default", 404, "not_found"),
    ("/v1/track", {"userId": "u", "event": "E", "messageId": "a\r\nb"}, "default", 400,
     "invalid_event"),
    ("/v1/identify", {"userId": "u", "traits": "rich"}, "default", 400, "invalid_event"),
]  # fmt: skip


async def test_errors_answer_with_a_status_and_a_json_code(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    """Every case runs against one ingest (a database per case would cost a second each)."""
    ingest = await in_process()
    for path, body, key, status, code in ERROR_CASES:
        got_status, reply, _ = await post(http, ingest, path, body, key=key)
        assert (got_status, reply["code"]) == (status, code), (path, str(body)[:80], key)
        assert reply["message"]
    assert await ingest.events() == []


async def test_bad_gzip_and_gzip_bombs_get_json_errors(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    gz = {"Content-Encoding": "gzip"}
    status, reply, _ = await post(http, ingest, "/v1/batch", b"not gzip", headers=gz)
    assert (status, reply["code"]) == (400, "bad_encoding")
    bomb = gzip.compress(b"[" + b" " * 5_000_000 + b"]")
    status, reply, _ = await post(http, ingest, "/v1/batch", bomb, headers=gz)
    assert (status, reply["code"]) == (413, "batch_too_large")
    status, reply, _ = await post(
        http, ingest, "/v1/batch", b"{}", headers={"Content-Encoding": "br"}
    )
    assert (status, reply["code"]) == (415, "unsupported_encoding")


async def test_wrong_method_gets_a_json_error(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    async with http.get(ingest.url + "/v1/track") as resp:
        assert resp.status == 405
        assert (await resp.json())["code"] == "method_not_allowed"


async def test_a_revoked_key_is_refused(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    body = {"userId": "u", "event": "E"}
    assert (await post(http, ingest, "/v1/track", body))[0] == 200
    assert ingest.pool is not None
    await ingest.pool.execute("UPDATE write_keys SET revoked_at = now()")
    # NOTIFY cairn_write_keys reaches the cache; the refusal follows within moments.
    async with asyncio.timeout(10):
        while (status := (await post(http, ingest, "/v1/track", body))[0]) == 200:
            await asyncio.sleep(0.05)
    status, reply, _ = await post(http, ingest, "/v1/track", body)
    assert (status, reply["code"]) == (401, "invalid_write_key")


async def test_a_key_over_its_rate_limit_gets_429_with_retry_after(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    limited = await ingest.new_key("limited", rate_limit=5)
    batch = {"batch": [{"type": "track", "userId": "u", "event": "E"}] * 5}
    status, _, _ = await post(http, ingest, "/v1/batch", batch, key=limited)
    assert status == 200
    status, reply, headers = await post(http, ingest, "/v1/batch", batch, key=limited)
    assert (status, reply["code"]) == (429, "rate_limited")
    assert int(headers["Retry-After"]) >= 1
    assert len(await ingest.events(5)) == 5
    # Another key is not affected.
    assert (await post(http, ingest, "/v1/batch", batch))[0] == 200


async def test_the_clients_trace_continues_into_the_stored_events(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    body = {"batch": [{"type": "track", "userId": "u", "event": "Traced"}]}
    status, _, _ = await post(http, ingest, "/v1/batch", body, headers={"traceparent": traceparent})
    assert status == 200
    [_] = await ingest.events(1)
    info = await ingest.js.stream_info(ingest.topology.inputs_stream)
    stored = await ingest.js.get_msg(ingest.topology.inputs_stream, info.state.last_seq)
    assert stored.headers is not None
    assert stored.headers["traceparent"].split("-")[1] == trace_id


async def test_a_large_batch_sent_in_chunks_is_read_whole(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    events = [
        {"type": "track", "userId": f"u{i}", "event": "Bulk", "properties": {"pad": "x" * 150}}
        for i in range(2000)
    ]
    body = json.dumps({"batch": events}).encode()
    assert 400_000 < len(body) < 500_000

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 7_000):
            yield body[start : start + 7_000]

    headers = {"Content-Type": "application/json", **auth(ingest.write_key)}
    async with http.post(ingest.url + "/v1/batch", data=chunks(), headers=headers) as resp:
        assert (resp.status, await resp.json()) == (200, {"success": True})
    assert len(await ingest.events(2000)) == 2000
