"""Unchanged Segment-family client libraries, pointed at a running ingest process, deliver their
events into JetStream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from rudderstack.analytics import Client as RudderClient
from segment.analytics import Client as SegmentClient
from segment.analytics.request import APIError

from tests.ingest.conftest import Ingest

pytestmark = pytest.mark.e2e


def send_with(client: Any) -> None:
    """The same calls through either library (their APIs are Segment's)."""
    client.identify("user-1", {"email": "ada@example.com", "plan": "pro"})
    client.track("user-1", "Cart Abandoned", {"cart_id": "c-9", "cart_value": 42.5})
    client.page("user-1", "Docs", "Install", {"path": "/install"})
    client.screen("user-1", "App", "Cart")
    client.group("user-1", "acme", {"name": "Acme"})
    client.alias("anon-7", "user-1")
    client.flush()


async def test_segment_and_rudderstack_clients_deliver_every_call_type(
    ingest_process: Callable[..., Any],
) -> None:
    ingest: Ingest = await ingest_process()
    errors: list[Any] = []

    def on_error(error: Any, items: Any) -> None:
        errors.append(error)

    segment = SegmentClient(
        ingest.write_key, host=ingest.url, sync_mode=True, on_error=on_error, max_retries=1
    )
    rudder = RudderClient(
        ingest.write_key, host=ingest.url, sync_mode=True, on_error=on_error, max_retries=1
    )
    await asyncio.to_thread(send_with, segment)
    await asyncio.to_thread(send_with, rudder)
    assert errors == []

    events = await ingest.events(12)
    assert len(events) == 12
    kinds = ["identify", "track", "page", "screen", "group", "alias"]
    assert [e.type for e in events] == kinds + kinds
    for sent in (events[:6], events[6:]):
        identify, track, page, _screen, group, alias = sent
        assert identify.traits == {"email": "ada@example.com", "plan": "pro"}
        assert track.event == "Cart Abandoned"
        assert track.properties == {"cart_id": "c-9", "cart_value": 42.5}
        assert track.profile_id == "user-1"
        assert page.name == "Install"
        assert group.group_id == "acme"
        assert alias.previous_id == "anon-7"
        assert all(e.write_key == ingest.key_id for e in sent)
        assert all(e.context.get("library") for e in sent)


async def test_a_client_with_a_wrong_key_is_told_so(ingest_process: Callable[..., Any]) -> None:
    ingest: Ingest = await ingest_process()
    client = SegmentClient("not-a-key", host=ingest.url, sync_mode=True, max_retries=0)
    with pytest.raises(APIError) as raised:
        await asyncio.to_thread(client.track, "u", "E")
    assert raised.value.status == 401
    assert raised.value.code == "invalid_write_key"
    assert await ingest.events() == []
