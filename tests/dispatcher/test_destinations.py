"""Destinations (Braze, Customer.io, Iterable) in their real request formats, and functions."""

from __future__ import annotations

import base64
from collections.abc import Callable

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from cairn_common.topology import Topology
from tests.dispatcher.support import (
    LOOPBACK,
    HttpSink,
    Reply,
    Results,
    apply,
    delivery,
    send_requests,
)
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.e2e

KEY = {"env": "TEST_API_KEY"}


async def test_braze_customerio_and_iterable_receive_the_journey_context(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    sink.default = Reply(201, {"message": "success"})
    await apply(
        db,
        "Destination",
        "braze",
        {
            "provider": "braze",
            "options": {"base_url": sink.url, "allow_networks": LOOPBACK, "api_key": KEY},
        },
    )
    await apply(
        db,
        "Destination",
        "cio",
        {
            "provider": "customerio",
            "options": {
                "base_url": sink.url,
                "allow_networks": LOOPBACK,
                "site_id": "site1",
                "api_key": KEY,
            },
        },
    )
    await apply(
        db,
        "Destination",
        "iterable",
        {
            "provider": "iterable",
            "options": {
                "base_url": sink.url,
                "allow_networks": LOOPBACK,
                "api_key": KEY,
                "event": "Cart Journey",
            },
        },
    )
    await start_dispatcher().wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(
        js,
        topology,
        delivery("b-1", destination="braze"),
        delivery("b-2", destination="cio"),
        delivery("b-3", destination="iterable", address="ada@example.test"),
    )
    for delivery_id in ("b-1", "b-2", "b-3"):
        await results.wait(delivery_id, "sent")
    by_path = {r.path: r for r in sink.requests}

    braze = by_path["/users/track"]
    assert braze.headers["authorization"] == "Bearer key-123"
    (event,) = braze.json()["events"]
    assert (event["external_id"], event["name"]) == ("user-1", "Journey Step Entered")
    props = event["properties"]
    assert (props["journey_name"], props["journey_version"], props["step_id"]) == (
        "abandoned-cart",
        1,
        "initial-email",
    )
    assert props["cart_id"] == "c1"
    assert props["journey_context"]["triggering_event"]["event"] == "Cart Abandoned"

    cio = by_path["/api/v1/customers/user-1/events"]
    assert cio.headers["authorization"] == "Basic " + base64.b64encode(b"site1:key-123").decode()
    assert cio.json()["id"] == "b-2"
    assert cio.json()["data"]["delivery_id"] == "b-2"

    iterable = by_path["/api/events/track"]
    assert iterable.headers["api-key"] == "key-123"
    body = iterable.json()
    assert (body["id"], body["eventName"], body["userId"], body["email"]) == (
        "b-3",
        "Cart Journey",
        "user-1",
        "ada@example.test",
    )
    assert body["dataFields"]["total"] == 42


GOOD_FUNCTION = """
async function onTrack(event, settings) {
  if (!event.properties.cart_id) { throw new ValidationError('no cart'); }
  const res = await fetch(settings.url, {
    method: 'POST',
    headers: {'content-type': 'application/json', 'x-key': settings.apiKey},
    body: JSON.stringify({user: event.userId, cart: event.properties.cart_id, id: event.messageId}),
  });
  if (res.status >= 500) { throw new RetryError('upstream ' + res.status); }
  return await res.json();
}
"""


async def test_destination_function_runs_on_track_and_fetches_allowed_hosts(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    sink.script.append(Reply(502, "bad gateway"))
    sink.default = Reply(200, {"ok": True})
    settings = {
        "url": f"{sink.url}/collect",
        "apiKey": {"env": "CAIRN_FUNCTION_SECRET_API_KEY"},
        "allowed_hosts": ["127.0.0.1"],
        "allow_networks": LOOPBACK,
    }
    await apply(
        db,
        "Destination",
        "fn",
        {"provider": "function", "function": GOOD_FUNCTION, "options": settings},
    )
    blocked = {"url": "http://example.invalid/x", "allowed_hosts": []}
    await apply(
        db,
        "Destination",
        "fn-blocked",
        {"provider": "function", "function": GOOD_FUNCTION, "options": blocked},
    )
    await start_dispatcher().wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(
        js,
        topology,
        delivery("fn-1", destination="fn"),
        delivery("fn-2", destination="fn", event={"event": "Cart Abandoned", "properties": {}}),
        delivery("fn-3", destination="fn-blocked"),
    )
    sent = await results.wait("fn-1", "sent")
    assert sent.attempts == 2  # RetryError on the 502, then success
    bodies = [r.json() for r in sink.requests]
    assert bodies == [{"user": "user-1", "cart": "c1", "id": "fn-1"}] * 2
    assert sink.requests[0].headers["x-key"] == "key-123"
    invalid = await results.wait("fn-2", "failed")
    assert invalid.reason == "function ValidationError: no cart"
    refused = await results.wait("fn-3", "failed")
    assert refused.reason == "function Error: fetch to 'example.invalid' is not allowed"


async def test_runaway_functions_are_contained_and_the_dispatcher_keeps_running(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    functions = {
        "loop": "async function onTrack(e, s) { while (true) {} }",
        "hog": "async function onTrack(e, s) {"
        " const a = []; while (true) { a.push(new Array(1e6).fill(7)); } }",
        "throws": "async function onTrack(e, s) { throw new TypeError('boom'); }",
        "broken": "async function onTrack(e, s) { this is not javascript",
        "identify-only": "async function onIdentify(e, s) { return 1; }",
    }
    # An endless loop in a promise continuation, after a fetch that settles at once (a refused
    # host): it runs on after the call returned, so only throwing the isolate away stops it.
    functions["loop-after-fetch"] = (
        "async function onTrack(e, s) {"
        " await fetch('http://refused.invalid/').catch(() => 0); while (true) {} }"
    )
    for name, code in functions.items():
        await apply(db, "Destination", name, {"provider": "function", "function": code})
    await apply(
        db,
        "Channel",
        "webhook",
        {
            "provider": "webhook",
            "options": {"allow_networks": LOOPBACK, "url": f"{sink.url}/after"},
        },
    )
    proc = start_dispatcher()
    await proc.wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(
        js, topology, *(delivery(f"x-{name}", destination=name) for name in functions)
    )

    assert (await results.wait("x-loop", "failed")).reason == "function exceeded its 1s time limit"
    assert (await results.wait("x-hog", "failed")).reason == "function exceeded its memory limit"
    assert (await results.wait("x-throws", "failed")).reason == "function TypeError: boom"
    broken = await results.wait("x-broken", "failed")
    assert broken.reason is not None
    assert broken.reason.startswith("function error: ")
    stuck = await results.wait("x-loop-after-fetch", "failed")
    assert stuck.reason == "function exceeded its 1s time limit"
    unsupported = await results.wait("x-identify-only", "failed")
    assert unsupported.reason == "function EventNotSupported: onTrack is not defined"
    # The same process still sends, and the looping function can run again on a fresh isolate.
    await send_requests(js, topology, delivery("x-after", channel="webhook"))
    await results.wait("x-after", "sent")
    assert proc.proc is not None
    assert proc.proc.poll() is None
