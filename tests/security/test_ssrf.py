"""Addresses from data cannot reach the dispatcher's own network (issue 11, item 3).

The issue's case: a webhook send whose URL is ``to: event.properties.callback`` (and a Web Push
endpoint taken from a trait) reached loopback, cloud metadata and private addresses, followed
redirects and stored 300 bytes of the answer. Through a real dispatcher and a real HTTP server on
loopback standing in for the internal service: every such address fails at once, naming the
address, with no request made; a redirect from an allowed host is the outcome, not followed; a
long answer is stored as one short line; and the neighbour's webhook in the same batch arrives.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import asyncpg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
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
    ledger,
    send_requests,
)
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.e2e


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_webhook_urls_from_events_cannot_reach_internal_addresses(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    # "callbacks" sends wherever the event said (no url in its settings): public addresses only.
    await apply(db, "Channel", "callbacks", {"provider": "webhook"})
    # "partner" may reach the sink on loopback, as a channel to an internal service would.
    await apply(
        db,
        "Channel",
        "partner",
        {"provider": "webhook", "options": {"allow_networks": LOOPBACK}},
    )
    sink.routes["/moved"] = Reply(302, "", headers={"Location": f"{sink.url}/admin/secrets"})
    sink.routes["/chatty"] = Reply(400, "line one\r\nX-Injected: yes\n" + "x" * 5000)
    await start_dispatcher().wait_ready()
    results = await Results.listen(nc, topology)

    hostile = {
        "loopback": f"{sink.url}/internal",
        "by-name": f"http://localhost:{sink.port}/internal",
        "mapped": f"http://[::ffff:127.0.0.1]:{sink.port}/internal",
        "metadata": "http://169.254.169.254/latest/meta-data/iam/",
        "private": "http://10.0.0.1/",
        "scheme": "file:///etc/passwd",
        "credentials": "http://user:pw@example.com/",
    }
    await send_requests(
        js,
        topology,
        *(delivery(key, channel="callbacks", address=url) for key, url in hostile.items()),
        delivery("redirect", channel="partner", address=f"{sink.url}/moved"),
        delivery("chatty", channel="partner", address=f"{sink.url}/chatty"),
        delivery("neighbour", channel="partner", address=f"{sink.url}/hook"),
    )

    await results.wait("neighbour", "sent")
    expected = {
        "loopback": "loopback address",
        "by-name": "loopback address",
        "mapped": "loopback address",
        "metadata": "link-local address",
        "private": "private address",
        "scheme": "is not an http(s) URL",
        "credentials": "carries credentials",
        "redirect": "a redirect, which is not followed",
        "chatty": "webhook answered 400: line one X-Injected: yes x",
    }
    for key, words in expected.items():
        failed = await results.wait(key, "failed")
        assert failed.reason is not None
        assert words in failed.reason, (key, failed.reason)
        assert failed.attempts == 1, key  # refused is permanent: never retried

    chatty = (await results.wait("chatty", "failed")).reason or ""
    assert len(chatty) <= len("webhook answered 400: ") + 200  # a short excerpt, not 5,000 bytes
    assert "\n" not in chatty
    assert "\r" not in chatty
    stored = await ledger(db, "chatty")
    assert stored is not None
    assert (stored["status"], stored["reason"]) == ("failed", chatty)

    # Only the allowed channel's requests arrived; nothing reached /internal or the redirect target.
    assert sorted(r.path for r in sink.requests) == ["/chatty", "/hook", "/moved"]


async def test_web_push_endpoints_from_traits_cannot_reach_internal_addresses(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    browser = ec.generate_private_key(ec.SECP256R1()).public_key()
    keys = {
        "p256dh": _b64url(
            browser.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        ),
        "auth": _b64url(b"0123456789abcdef"),
    }
    vapid = ec.generate_private_key(ec.SECP256R1())
    raw = vapid.private_numbers().private_value.to_bytes(32, "big")
    options = {
        "vapid_private_key": {"env": "TEST_VAPID_KEY"},
        "vapid_subject": "mailto:o@shop.test",
    }
    await apply(db, "Channel", "webpush", {"provider": "webpush", "options": options})
    await apply(
        db,
        "Channel",
        "localpush",
        {"provider": "webpush", "options": {**options, "allow_networks": LOOPBACK}},
    )
    for name in ("p-public", "p-local"):
        await apply(db, "Template", name, {"channel": "push", "title": "Hi", "body": "Cart"})
    sink.default = Reply(201, "")
    await start_dispatcher(TEST_VAPID_KEY=_b64url(raw)).wait_ready()
    results = await Results.listen(nc, topology)

    def subscription(endpoint: str) -> str:
        return json.dumps({"endpoint": endpoint, "keys": keys})

    await send_requests(
        js,
        topology,
        delivery(
            "trait-loopback",
            channel="webpush",
            template="p-public",
            address=subscription(f"{sink.url}/push/evil"),
        ),
        delivery(
            "trait-metadata",
            channel="webpush",
            template="p-public",
            address=subscription("http://169.254.169.254/latest/meta-data/"),
        ),
        delivery(
            "neighbour",
            channel="localpush",
            template="p-local",
            address=subscription(f"{sink.url}/push/ok"),
        ),
    )
    await results.wait("neighbour", "sent")
    for key, words in (("trait-loopback", "loopback"), ("trait-metadata", "link-local")):
        failed = await results.wait(key, "failed")
        assert failed.reason is not None
        assert words in failed.reason, (key, failed.reason)
        assert failed.attempts == 1
    assert [r.path for r in sink.requests] == ["/push/ok"]
