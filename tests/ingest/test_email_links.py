"""Email open pixel, click redirect and one-click unsubscribe: sealed links the dispatcher writes
enter events journeys can wait for; forged, retargeted or expired links do nothing, and replays
enter one event."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from cairn_cli.local import LocalNats
from cairn_common.bus import connect, provision_topology
from cairn_common.topology import Topology
from cairn_common.tracking import (
    LinkPayload,
    TrackedMessage,
    TrackingKeys,
    click_url,
    open_url,
    unsubscribe_url,
)
from tests.ingest.conftest import TRACKING_SECRET, InProcessFactory, stored_events

MESSAGE = TrackedMessage(
    delivery_id="dl-1",
    instance_id="in-1",
    journey="abandoned-cart",
    step_id="initial-email",
    profile_id="user-1",
    address="ada@example.com",
)
IDS = {
    "delivery_id": "dl-1",
    "instance_id": "in-1",
    "journey": "abandoned-cart",
    "step_id": "initial-email",
    "channel": "email",
}


async def test_opening_and_clicking_enter_events_for_the_message(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    async with http.get(open_url(ingest.url, TRACKING_SECRET, MESSAGE)) as resp:
        assert resp.status == 200
        assert resp.content_type == "image/gif"
        assert (await resp.read()).startswith(b"GIF89a")
        assert "no-store" in resp.headers["Cache-Control"]
    link = click_url(ingest.url, TRACKING_SECRET, MESSAGE, "https://shop.example/cart?id=9")
    async with http.get(link, allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "https://shop.example/cart?id=9"
    opened, clicked = await ingest.events(2)
    assert (opened.event, opened.profile_id, opened.properties) == ("Email Opened", "user-1", IDS)
    assert clicked.event == "Email Link Clicked"
    assert clicked.properties == {**IDS, "url": "https://shop.example/cart?id=9"}
    assert opened.source == "tracking"


async def test_forged_or_retargeted_links_are_refused_and_enter_nothing(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    forged = open_url(ingest.url, "not-the-secret", MESSAGE)
    async with http.get(forged) as resp:
        assert resp.status == 404
        assert resp.content_type == "image/gif"  # a refused pixel is still an image
    good = click_url(ingest.url, TRACKING_SECRET, MESSAGE, "https://shop.example/")
    evil = click_url(ingest.url, "guess", MESSAGE, "https://evil.example/")
    token = good.rsplit("/", 1)[1]
    retargeted = good.rsplit("/", 1)[0] + "/" + token[:20] + evil.rsplit("/", 1)[1][20:]
    async with http.get(retargeted, allow_redirects=False) as resp:
        assert resp.status == 404
        assert "Location" not in resp.headers
    as_click = good.rsplit("/", 1)[1]
    async with http.get(f"{ingest.url}/t/o/{as_click}.gif") as resp:
        assert resp.status == 404  # a click link is not an open link
    assert await ingest.events() == []


async def test_one_click_unsubscribe_suppresses_the_address_and_enters_an_event(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    assert ingest.pool is not None
    link = unsubscribe_url(ingest.url, TRACKING_SECRET, MESSAGE)
    async with http.get(link) as resp:  # a mail scanner following the link changes nothing
        assert resp.status == 200
        assert "<form method=post" in await resp.text()
    assert await ingest.pool.fetchval("SELECT count(*) FROM suppressions") == 0
    async with http.post(link, data={"List-Unsubscribe": "One-Click"}) as resp:
        assert resp.status == 200
    async with http.post(link, data={"List-Unsubscribe": "One-Click"}) as resp:
        assert resp.status == 200  # twice is harmless
    rows = await ingest.pool.fetch("SELECT profile_id, channel, address, reason FROM suppressions")
    assert [tuple(r) for r in rows] == [("user-1", "email", "ada@example.com", "unsubscribed")]
    events = await ingest.events(1)
    assert [e.event for e in events] == ["Unsubscribed"]  # the second POST entered nothing new
    assert events[0].properties == IDS


async def test_a_hundred_replays_of_a_link_enter_one_event_and_still_get_their_answer(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    pixel = open_url(ingest.url, TRACKING_SECRET, MESSAGE)
    link = click_url(ingest.url, TRACKING_SECRET, MESSAGE, "https://shop.example/cart")

    async def hit(url: str) -> int:
        async with http.get(url, allow_redirects=False) as resp:
            await resp.read()
            return resp.status

    statuses = await asyncio.gather(*(hit(pixel) for _ in range(100)), hit(link), hit(link))
    assert set(statuses[:100]) == {200}
    assert statuses[100:] == [302, 302]
    # Re-sealed links of the same delivery (another copy of the email) are the same link too.
    assert await hit(open_url(ingest.url, TRACKING_SECRET, MESSAGE)) == 200
    other = click_url(ingest.url, TRACKING_SECRET, MESSAGE, "https://shop.example/other")
    assert await hit(other) == 302
    await asyncio.sleep(0.5)  # let anything that would wrongly enter arrive
    events = await ingest.events(3)
    assert sorted(e.event for e in events) == [
        "Email Link Clicked",
        "Email Link Clicked",
        "Email Opened",
    ]
    assert {e.properties.get("url") for e in events} == {
        None,
        "https://shop.example/cart",
        "https://shop.example/other",
    }


async def test_expired_links_answer_410_or_go_to_the_fallback_never_to_their_target(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    keys = TrackingKeys(TRACKING_SECRET)
    old = time.time() - 200 * 86400
    click = keys.seal("click", LinkPayload(message=MESSAGE, url="https://shop.example/"), now=old)
    pixel = keys.seal("open", LinkPayload(message=MESSAGE), now=old)
    unsubscribe = keys.seal("unsubscribe", LinkPayload(message=MESSAGE), now=old)

    plain = await in_process()
    async with http.get(f"{plain.url}/t/c/{click}", allow_redirects=False) as resp:
        assert resp.status == 410
        assert "Location" not in resp.headers
    async with http.get(f"{plain.url}/t/o/{pixel}.gif") as resp:
        assert (resp.status, resp.content_type) == (410, "image/gif")
    # Unsubscribe links do not expire by time (people unsubscribe from old mail).
    async with http.post(f"{plain.url}/t/u/{unsubscribe}") as resp:
        assert resp.status == 200
    longer = await in_process(tracking_link_ttl_days=300)
    async with http.get(f"{longer.url}/t/c/{click}", allow_redirects=False) as resp:
        assert resp.status == 302  # within this ingest's longer time-to-live

    fallback = await in_process(tracking_fallback_url="https://shop.example/home")
    for url in (f"{fallback.url}/t/c/{click}", f"{fallback.url}/t/c/not-a-token"):
        async with http.get(url, allow_redirects=False) as resp:
            assert resp.status == 302
            assert resp.headers["Location"] == "https://shop.example/home"
    await asyncio.sleep(0.5)  # let anything that would wrongly enter arrive
    events = await plain.events(2)
    assert [e.event for e in events] == ["Unsubscribed", "Email Link Clicked"]


async def test_an_open_while_nats_is_away_is_stored_once_it_is_back(
    ingest_process: Callable[..., Any],
    http: aiohttp.ClientSession,
    tmp_path: Path,
    namespace: str,
) -> None:
    """The pixel is served at once; the event waits in ingest's backlog, not lost."""
    nats = LocalNats(tmp_path / "nats")
    nats.start()
    try:
        topology = Topology(namespace)
        nc = await connect(nats.url, name="test-setup")
        await provision_topology(nc.jetstream(), topology)
        await nc.drain()
        ingest = await ingest_process(CAIRN_NATS_URL=nats.url, CAIRN_PUBLISH_TIMEOUT_SECONDS="0.5")
        nats.stop()
        async with http.get(open_url(ingest.url, TRACKING_SECRET, MESSAGE)) as resp:
            assert resp.status == 200
            assert resp.content_type == "image/gif"
        await asyncio.sleep(1.0)  # it stays away a while: the backlog tries again and again
        nats.start()
        nc = await connect(nats.url, name="test-reader")
        try:
            (opened,) = await stored_events(nc.jetstream(), topology, 1, timeout=30)
        finally:
            await nc.drain()
        assert (opened.event, opened.properties) == ("Email Opened", IDS)
        assert "tracking event waits for JetStream" in ingest.proc.output()  # type: ignore[union-attr]
    finally:
        nats.stop()
