"""Each channel delivers to its local real-protocol server: SMTP, Twilio, FCM v1, Web Push."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import http_ece  # type: ignore[import-untyped]
import pytest
from aiosmtpd.smtp import AuthResult
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from cairn_cli.local import free_port
from cairn_common import tracking
from cairn_common.topology import Topology
from tests.dispatcher.conftest import TRACKING_SECRET
from tests.dispatcher.support import (
    LOOPBACK,
    HttpSink,
    Reply,
    Results,
    SmtpSink,
    apply,
    delivery,
    email_channel,
    ledger,
    self_signed_tls,
    send_requests,
)
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.e2e

EMAIL_TEMPLATE = {
    "channel": "email",
    "subject": "{{ profile.first_name | default: 'Hi' }}, your cart is waiting",
    "html": "<html><body><p>Total {{ event.properties.total }}</p>"
    '<a href="https://shop.test/cart?id={{ event.properties.cart_id }}">Back to cart</a>'
    "</body></html>",
    "text": "Total {{ event.properties.total }}",
}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def _email_channel(db: asyncpg.Connection, smtp: SmtpSink) -> None:
    # The cart link is built from the event: tracked because the shop's host is listed.
    tracking = {"link_hosts": ["shop.test"]}
    await email_channel(db, smtp, "cart-reminder-email", EMAIL_TEMPLATE, tracking=tracking)


async def test_email_over_smtp_carries_tracking_unsubscribe_and_delivery_id(
    db: asyncpg.Connection,
    smtp: SmtpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    await _email_channel(db, smtp)
    await start_dispatcher().wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(
        js,
        topology,
        delivery(
            "e-1",
            channel="email",
            template="cart-reminder-email",
            address="ada@example.test",
            profile={"first_name": "Zoë"},
        ),
    )

    sent = await results.wait("e-1", "sent")
    assert (sent.provider_message_id, sent.attempts) == ("<e-1@cairn>", 1)
    ((mail_from, rcpts, msg),) = smtp.messages
    assert (mail_from, rcpts) == ("shop@example.test", ["ada@example.test"])
    assert msg["Subject"] == "Zoë, your cart is waiting"
    assert msg["Message-ID"] == "<e-1@cairn>"
    unsubscribe = msg["List-Unsubscribe"].strip("<>")
    assert unsubscribe.startswith("http://track.test/t/u/")
    token = unsubscribe.rsplit("/", 1)[1]
    assert tracking.verify(TRACKING_SECRET, "unsubscribe", token).message.delivery_id == "e-1"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    html_part = msg.get_body(("html",))
    assert html_part is not None
    html = html_part.get_content()
    assert "Total 42" in html
    assert "https://shop.test/cart" not in html  # rewritten through the click tracker
    click = html.split('href="http://track.test/t/c/')[1].split('"')[0]
    assert tracking.verify(TRACKING_SECRET, "click", click).url == "https://shop.test/cart?id=c1"
    assert "/t/o/" in html
    assert unsubscribe in html


async def test_smtp_bounce_suppresses_the_address_for_later_sends(
    db: asyncpg.Connection,
    smtp: SmtpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    smtp.refuse.add("gone@example.test")
    await _email_channel(db, smtp)
    await start_dispatcher().wait_ready()
    results = await Results.listen(nc, topology)
    first = delivery(
        "e-2", channel="email", template="cart-reminder-email", address="gone@example.test"
    )
    await send_requests(js, topology, first)
    bounced = await results.wait("e-2", "bounced")
    assert bounced.reason is not None
    assert "550" in bounced.reason

    second = delivery(
        "e-3",
        channel="email",
        template="cart-reminder-email",
        address="gone@example.test",
        profile_id="someone-else",
    )
    await send_requests(js, topology, second)
    suppressed = await results.wait("e-3", "suppressed")
    assert suppressed.reason == "bounced"
    assert smtp.messages == []


async def test_sms_through_the_twilio_messages_api(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    sink.default = Reply(201, {"sid": "SM123", "status": "queued"})
    await apply(
        db,
        "Channel",
        "sms",
        {
            "provider": "twilio",
            "options": {
                "base_url": sink.url,
                "allow_networks": LOOPBACK,
                "account_sid": "AC42",
                "auth_token": {"env": "TEST_API_KEY"},
                "from": "+15550001",
            },
        },
    )
    await apply(
        db,
        "Template",
        "cart-sms",
        {"channel": "sms", "body": "Cart {{ event.properties.cart_id }} waits"},
    )
    await start_dispatcher().wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(
        js, topology, delivery("s-1", channel="sms", template="cart-sms", address="+15559999")
    )

    sent = await results.wait("s-1", "sent")
    assert sent.provider_message_id == "SM123"
    (req,) = sink.requests
    assert req.path == "/2010-04-01/Accounts/AC42/Messages.json"
    assert req.form() == {"To": "+15559999", "From": "+15550001", "Body": "Cart c1 waits"}
    assert req.headers["authorization"] == "Basic " + base64.b64encode(b"AC42:key-123").decode()
    assert req.headers["x-cairn-delivery-id"] == "s-1"


async def test_push_through_fcm_v1_with_a_service_account_token(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    account = tmp_path / "sa.json"
    account.write_text(
        json.dumps(
            {
                "client_email": "cairn@p.iam.test",
                "private_key": pem,
                "token_uri": f"{sink.url}/token",
            }
        )
    )
    sink.routes["/token"] = Reply(200, {"access_token": "ya29.tok", "expires_in": 3600})
    sink.default = Reply(200, {"name": "projects/p1/messages/m-1"})
    await apply(
        db,
        "Channel",
        "push",
        {
            "provider": "fcm",
            "options": {
                "base_url": sink.url,
                "allow_networks": LOOPBACK,
                "project_id": "p1",
                "service_account": {"file": str(account)},
            },
        },
    )
    await apply(
        db,
        "Template",
        "cart-push",
        {
            "channel": "push",
            "title": "Hi {{ profile.name }}",
            "body": "Your cart",
            "data": {"cart": "{{ event.properties.cart_id }}"},
        },
    )
    await start_dispatcher().wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(
        js,
        topology,
        delivery(
            "p-1",
            channel="push",
            template="cart-push",
            address="device-tok",
            profile={"name": "Bo"},
        ),
    )

    sent = await results.wait("p-1", "sent")
    assert sent.provider_message_id == "projects/p1/messages/m-1"
    token_req, send_req = sink.requests
    assert token_req.form()["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert send_req.path == "/v1/projects/p1/messages:send"
    assert send_req.headers["authorization"] == "Bearer ya29.tok"
    message = send_req.json()["message"]
    assert message["token"] == "device-tok"
    assert message["notification"] == {"title": "Hi Bo", "body": "Your cart"}
    assert message["data"]["cart"] == "c1"


async def test_web_push_is_encrypted_for_the_subscription_and_vapid_signed(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    browser_key = ec.generate_private_key(ec.SECP256R1())
    auth_secret = os.urandom(16)
    p256dh = browser_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    subscription = {
        "endpoint": f"{sink.url}/push/abc",
        "keys": {"p256dh": _b64url(p256dh), "auth": _b64url(auth_secret)},
    }
    vapid_key = ec.generate_private_key(ec.SECP256R1())
    raw = vapid_key.private_numbers().private_value.to_bytes(32, "big")
    sink.default = Reply(201, "")
    await apply(
        db,
        "Channel",
        "webpush",
        {
            "provider": "webpush",
            "options": {
                "allow_networks": LOOPBACK,
                "vapid_private_key": {"env": "TEST_VAPID_KEY"},
                "vapid_subject": "mailto:ops@shop.test",
            },
        },
    )
    await apply(
        db,
        "Template",
        "cart-webpush",
        {"channel": "push", "title": "Hi", "body": "Cart {{ event.properties.cart_id }}"},
    )
    await start_dispatcher(TEST_VAPID_KEY=_b64url(raw)).wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(
        js,
        topology,
        delivery(
            "w-1", channel="webpush", template="cart-webpush", address=json.dumps(subscription)
        ),
    )

    await results.wait("w-1", "sent")
    (req,) = sink.requests
    assert req.path == "/push/abc"
    assert req.headers["content-encoding"] == "aes128gcm"
    assert req.headers["authorization"].startswith("vapid t=")
    jwt = req.headers["authorization"].split("t=")[1].split(",")[0]
    claims = json.loads(base64.urlsafe_b64decode(jwt.split(".")[1] + "=="))
    assert claims["aud"] == sink.url
    assert claims["sub"] == "mailto:ops@shop.test"
    plain = http_ece.decrypt(
        req.body, private_key=browser_key, auth_secret=auth_secret, version="aes128gcm"
    )
    payload = json.loads(plain)
    assert (payload["title"], payload["body"], payload["delivery_id"]) == ("Hi", "Cart c1", "w-1")
    row = await ledger(db, "w-1")
    assert row is not None
    assert row["status"] == "sent"


async def test_unsubscribe_link_works_end_to_end_through_ingest(
    db: asyncpg.Connection,
    smtp: SmtpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
    spawn: Callable[..., ServiceProcess],
) -> None:
    ingest_port = free_port()
    ingest = spawn(
        "cairn_ingest", CAIRN_HTTP_PORT=str(ingest_port), CAIRN_TRACKING_SECRET=TRACKING_SECRET
    )
    await _email_channel(db, smtp)
    await ingest.wait_ready()
    await start_dispatcher(CAIRN_TRACKING_BASE_URL=f"http://127.0.0.1:{ingest_port}").wait_ready()
    results = await Results.listen(nc, topology)
    first = delivery(
        "u-1", channel="email", template="cart-reminder-email", address="bo@example.test"
    )
    await send_requests(js, topology, first)
    await results.wait("u-1", "sent")
    ((_, _, msg),) = smtp.messages
    unsubscribe = msg["List-Unsubscribe"].strip("<>")

    # What a mail client's one-click unsubscribe button does (RFC 8058).
    async with (
        aiohttp.ClientSession() as http,
        http.post(unsubscribe, data="List-Unsubscribe=One-Click") as resp,
    ):
        assert resp.status == 200

    second = delivery(
        "u-2", channel="email", template="cart-reminder-email", address="bo@example.test"
    )
    await send_requests(js, topology, second)
    suppressed = await results.wait("u-2", "suppressed")
    assert suppressed.reason == "unsubscribed"
    assert len(smtp.messages) == 1


async def test_smtp_with_starttls_and_auth(
    db: asyncpg.Connection,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth: Any) -> Any:
        ok = (auth.login, auth.password) == (b"mailer", b"key-123")
        return AuthResult(success=ok, auth_data=auth)

    smtp = SmtpSink(
        tls_context=self_signed_tls(tmp_path),
        require_starttls=True,
        authenticator=authenticate,
        auth_require_tls=True,
    ).start()
    try:
        await apply(
            db,
            "Channel",
            "email",
            {
                "provider": "smtp",
                "endpoint": f"smtp://127.0.0.1:{smtp.port}",
                "options": {
                    "starttls": True,
                    "validate_certs": False,
                    "username": "mailer",
                    "from": "shop@example.test",
                },
                "credentials": {"password": {"env": "TEST_API_KEY"}},
            },
        )
        await apply(db, "Template", "plain", {"channel": "email", "subject": "Hi", "text": "Hello"})
        await start_dispatcher().wait_ready()
        results = await Results.listen(nc, topology)
        req = delivery("tls-1", channel="email", template="plain", address="ada@example.test")
        await send_requests(js, topology, req)
        await results.wait("tls-1", "sent")
        ((_, rcpts, msg),) = smtp.messages
        assert rcpts == ["ada@example.test"]
        assert smtp.logins == ["mailer"]
        assert msg.get_content().startswith("Hello")
    finally:
        smtp.stop()


async def test_sms_to_a_number_that_replied_stop_suppresses_it(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    sink.script.append(
        Reply(400, {"code": 21610, "message": "Attempt to send to unsubscribed recipient"})
    )
    await apply(
        db,
        "Channel",
        "sms",
        {
            "provider": "twilio",
            "base_url": sink.url,
            "options": {"account_sid": "AC42", "from": "+15550001", "allow_networks": LOOPBACK},
            "credentials": {"auth_token": {"env": "TEST_API_KEY"}},
        },
    )
    await apply(db, "Template", "hi-sms", {"channel": "sms", "body": "hi"})
    await start_dispatcher().wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(
        js, topology, delivery("stop-1", channel="sms", template="hi-sms", address="+1555")
    )
    opted_out = await results.wait("stop-1", "suppressed")
    assert opted_out.reason == "twilio 21610: recipient opted out"
    await send_requests(
        js, topology, delivery("stop-2", channel="sms", template="hi-sms", address="+1555")
    )
    assert (await results.wait("stop-2", "suppressed")).reason == "unsubscribed"
    assert len(sink.requests) == 1
