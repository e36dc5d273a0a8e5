"""Email open pixel, click redirect and one-click unsubscribe: signed links the dispatcher writes
enter events journeys can wait for; forged or retargeted links do nothing."""

from __future__ import annotations

import aiohttp

from cairn_common.tracking import TrackedMessage, click_url, open_url, unsubscribe_url
from tests.ingest.conftest import TRACKING_SECRET, InProcessFactory

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
        assert (await resp.json())["code"] == "not_found"
    good = click_url(ingest.url, TRACKING_SECRET, MESSAGE, "https://shop.example/")
    evil = click_url(ingest.url, "guess", MESSAGE, "https://evil.example/")
    signature = good.rsplit(".", 1)[1]
    retargeted = evil.rsplit(".", 1)[0] + "." + signature
    async with http.get(retargeted, allow_redirects=False) as resp:
        assert resp.status == 404
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
    events = await ingest.events(2)
    assert [e.event for e in events] == ["Unsubscribed", "Unsubscribed"]
    assert events[0].properties == IDS
