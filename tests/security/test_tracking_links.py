"""Tracking links cannot be turned into an open redirect, read, or replayed (issue 11, item 5).

The issue's cases: every ``http(s)`` link in the rendered HTML was signed, including URLs that
came from event properties, so a signed link on the customer's own tracking domain redirected
wherever the event said; the payload showed the profile id and email in readable base64; and
100 replays of an open pixel became 100 input events. Through a real dispatcher sending to a
local SMTP server and ingest's app serving the links on real NATS and PostgreSQL: only the
template's literal links and links to the channel's listed hosts are tracked (a data-driven URL,
and one a browser would read as another host, are left as they are), nothing of the message is
readable in a token, and a hundred replays enter one event while each still gets its answer.
The neighbour email in the same batch is sent and tracked as usual.
"""

from __future__ import annotations

import asyncio
import base64
import html as html_lib
import re
from collections.abc import Callable

import aiohttp
import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from cairn_common.messages import Event, decode
from cairn_common.topology import Topology
from tests.dispatcher.support import (
    Results,
    SmtpSink,
    delivery,
    email_channel,
    send_requests,
)
from tests.ingest.conftest import InProcessFactory
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.e2e

TEMPLATE = {
    "channel": "email",
    "subject": "Your cart",
    "html": "<html><body>"
    '<a href="https://shop.test/cart">literal</a>'
    '<a href="{{ event.properties.callback }}">from data</a>'
    '<a href="https://shop.test/item/{{ event.properties.sku }}">listed host</a>'
    '<a href="{{ event.properties.tricky }}">tricky</a>'
    "</body></html>",
}
HOSTILE = {
    "callback": "https://evil.example/phish",
    "sku": "42",
    # urlsplit reads the host as shop.test, a browser as evil.example.
    "tricky": "https://evil.example\\@shop.test/x",
}
TRACKED = re.compile(r'href="(http://track\.test/t/c/[^"]+)"')


async def test_only_authored_links_are_sealed_and_replays_enter_one_event(
    db: asyncpg.Connection,
    smtp: SmtpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
    in_process: InProcessFactory,
    http: aiohttp.ClientSession,
) -> None:
    await email_channel(db, smtp, "cart", TEMPLATE, tracking={"link_hosts": ["shop.test"]})
    await start_dispatcher().wait_ready()
    results = await Results.listen(nc, topology)
    hostile = {"event": "Cart Abandoned", "properties": HOSTILE}
    neighbour = {"event": "Cart Abandoned", "properties": {**HOSTILE, "callback": "", "sku": "7"}}
    await send_requests(
        js,
        topology,
        delivery("attack", channel="email", template="cart", address="ada@example.test",
                 profile_id="ada-profile", event=hostile),
        delivery("neighbour", channel="email", template="cart", address="bo@example.test",
                 profile_id="bo-profile", instance_id="inst-2", event=neighbour),
    )  # fmt: skip
    await results.wait("attack", "sent")
    await results.wait("neighbour", "sent")
    bodies = {}
    for _, rcpts, msg in smtp.messages:
        part = msg.get_body(("html",))
        assert part is not None
        bodies[rcpts[0]] = part.get_content()
    attack = bodies["ada@example.test"]

    # The data-driven links are left exactly as rendered: not tracked, not sealed.
    assert 'href="https://evil.example/phish"' in attack
    assert "evil.example\\@shop.test/x" in html_lib.unescape(attack)
    links = TRACKED.findall(attack)
    assert len(links) == 2  # the literal link and the listed host's link
    assert len(TRACKED.findall(bodies["bo@example.test"])) == 2

    # Nothing of the message can be read in a token.
    for link in [*links, *re.findall(r'src="(http://track\.test/t/o/[^"]+)"', attack)]:
        token = link.rsplit("/", 1)[1].removesuffix(".gif")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        for secret in (b"ada-profile", b"ada@example.test", b"shop.test", b"abandoned-cart"):
            assert secret not in raw

    ingest = await in_process()
    served = [link.replace("http://track.test", ingest.url) for link in links]
    targets = set()
    for link in served:
        async with http.get(link, allow_redirects=False) as resp:
            assert resp.status == 302
            targets.add(resp.headers["Location"])
    assert targets == {"https://shop.test/cart", "https://shop.test/item/42"}

    pixel = re.findall(r'src="http://track\.test(/t/o/[^"]+)"', attack)[0]

    async def hit() -> int:
        async with http.get(f"{ingest.url}{pixel}") as resp:
            await resp.read()
            return resp.status

    assert set(await asyncio.gather(*(hit() for _ in range(100)))) == {200}
    for link in served:  # clicked again: redirected again, nothing new entered
        async with http.get(link, allow_redirects=False) as resp:
            assert resp.status == 302
    await asyncio.sleep(0.5)  # let anything that would wrongly enter arrive
    events = await _events(js, topology, 3)
    assert sorted(e.event for e in events) == [
        "Email Link Clicked",
        "Email Link Clicked",
        "Email Opened",
    ]
    assert {e.profile_id for e in events} == {"ada-profile"}


async def _events(js: JetStreamContext, topology: Topology, expected: int) -> list[Event]:
    """The events in the inputs stream (the dispatcher's results are there too), once there
    are ``expected`` of them."""
    async with asyncio.timeout(15):
        return await _wait_events(js, topology, expected)


async def _wait_events(js: JetStreamContext, topology: Topology, expected: int) -> list[Event]:
    while True:
        info = await js.stream_info(topology.inputs_stream)
        events = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(topology.inputs_stream, seq)
            if isinstance(message := decode(msg.data or b""), Event):
                events.append(message)
        if len(events) >= expected:
            return events
        await asyncio.sleep(0.1)
