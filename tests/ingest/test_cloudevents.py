"""CloudEvents 1.0 over HTTP, written by the CloudEvents SDK, in binary, structured and batch
modes: each becomes a track event (type → event, subject → userId, data → properties)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import aiohttp
from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from tests.ingest.conftest import Ingest, InProcessFactory


def basic(ingest: Ingest) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{ingest.write_key}:".encode()).decode()}


def cart_event(n: int, **extra: str) -> CloudEvent:
    return CloudEvent(
        attributes={
            "id": f"ce-{n}",
            "source": "/shop/checkout",
            "type": "Cart Abandoned",
            "subject": "user 1",
            "time": datetime(2026, 11, 1, 12, 0, n, tzinfo=UTC),
            "datacontenttype": "application/json",
            **extra,
        },
        data={"cart_id": f"c-{n}", "cart_value": 10 * n},
    )


async def test_cloudevents_sdk_messages_in_every_mode_become_track_events(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    url = ingest.url + "/v1/cloudevents"

    binary = to_binary_event(cart_event(1, tenant="eu"))
    async with http.post(url, data=binary.body, headers={**binary.headers, **basic(ingest)}) as r:
        assert (r.status, await r.json()) == (200, {"success": True})

    structured = to_structured_event(cart_event(2))
    async with http.post(
        url, data=structured.body, headers={**structured.headers, **basic(ingest)}
    ) as r:
        assert (r.status, await r.json()) == (200, {"success": True})

    fmt = JSONFormat()
    batch = b"[" + b",".join(fmt.write(cart_event(n)) for n in (3, 4)) + b"]"
    headers = {"Content-Type": "application/cloudevents-batch+json", **basic(ingest)}
    async with http.post(url, data=batch, headers=headers) as r:
        assert (r.status, await r.json()) == (200, {"success": True})

    events = await ingest.events(4)
    assert [e.message_id for e in events] == ["ce-1", "ce-2", "ce-3", "ce-4"]
    for n, event in enumerate(events, start=1):
        assert event.type == "track"
        assert event.event == "Cart Abandoned"
        assert event.profile_id == "user 1"
        assert event.properties == {"cart_id": f"c-{n}", "cart_value": 10 * n}
        assert event.timestamp == datetime(2026, 11, 1, 12, 0, n, tzinfo=UTC)
        assert event.source == "cloudevents"
        assert event.context["cloudevents"]["source"] == "/shop/checkout"
    assert events[0].context["cloudevents"]["tenant"] == "eu"


async def test_bad_cloudevents_get_clear_errors_and_good_ones_in_a_batch_are_kept(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    url = ingest.url + "/v1/cloudevents"
    headers = {"Content-Type": "application/cloudevents+json", **basic(ingest)}
    async with http.post(url, data=b'{"specversion": "1.0", "id": "x"}', headers=headers) as r:
        body = await r.json()
        assert (r.status, body["code"]) == (400, "invalid_event")
        assert "source" in body["message"]
        assert "type" in body["message"]
    async with http.post(url, data=b"hello", headers=basic(ingest)) as r:
        assert (r.status, (await r.json())["code"]) == (400, "not_a_cloudevent")
    anonymous = (
        b'{"specversion":"1.0","id":"a1","source":"/s","type":"Seen","anonymousid":"anon-1"}'
    )
    nobody = b'{"specversion":"1.0","id":"a2","source":"/s","type":"Seen"}'
    batch = b"[" + anonymous + b"," + nobody + b"]"
    headers["Content-Type"] = "application/cloudevents-batch+json"
    async with http.post(url, data=batch, headers=headers) as r:
        body = await r.json()
        assert r.status == 200
        assert body["accepted"] == 1
        assert [x["index"] for x in body["rejected"]] == [1]
    [event] = await ingest.events(1)
    assert event.anonymous_id == "anon-1"
    assert event.profile_id == "anon-1"
