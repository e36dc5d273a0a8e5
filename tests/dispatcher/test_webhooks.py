"""Webhooks (Standard Webhooks), the ledger, retries and dead letters, end to end."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from cairn_common.bus import publish
from cairn_common.messages import DeadLetter, decode
from cairn_common.topology import Topology
from tests.dispatcher.conftest import WEBHOOK_SECRET
from tests.dispatcher.support import (
    LOOPBACK,
    HttpSink,
    Reply,
    Results,
    apply,
    delivery,
    eventually,
    ledger,
    send_requests,
)
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.e2e


async def _webhook_channel(db: asyncpg.Connection, sink: HttpSink) -> None:
    await apply(
        db,
        "Channel",
        "webhook",
        {
            "provider": "webhook",
            "endpoint": f"{sink.url}/hook",
            "options": {"allow_networks": LOOPBACK},
            "credentials": {"secret": {"env": "TEST_WEBHOOK_SECRET"}},
        },
    )


async def test_webhook_is_signed_per_standard_webhooks_with_the_delivery_id(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    await _webhook_channel(db, sink)
    await start_dispatcher().wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(js, topology, delivery("d-1", channel="webhook", profile={"plan": "pro"}))

    sent = await results.wait("d-1", "sent")
    assert sent.channel == "webhook"
    (req,) = sink.requests
    assert req.path == "/hook"
    assert req.headers["webhook-id"] == "d-1"
    key = base64.b64decode(WEBHOOK_SECRET.removeprefix("whsec_"))
    signed = f"d-1.{req.headers['webhook-timestamp']}.".encode() + req.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert req.headers["webhook-signature"] == f"v1,{expected}"
    body = req.json()
    assert body["data"]["journey_name"] == "abandoned-cart"
    assert body["data"]["profile"] == {"plan": "pro"}
    assert body["data"]["journey_context"]["triggering_event"]["properties"]["cart_id"] == "c1"
    row = await ledger(db, "d-1")
    assert row is not None
    assert row["status"] == "sent"


async def test_redelivered_request_sends_nothing_twice(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    await _webhook_channel(db, sink)
    await start_dispatcher().wait_ready()
    results = await Results.listen(nc, topology)
    req = delivery("d-2", channel="webhook")
    await send_requests(js, topology, req)
    await results.wait("d-2", "sent")
    # The same request again, past JetStream's dedupe (another Nats-Msg-Id), then a marker.
    await publish(js, topology.delivery_subject("webhook"), req, msg_id="d-2-again")
    await send_requests(js, topology, delivery("d-3", channel="webhook"))
    await results.wait("d-3", "sent")
    await eventually(lambda: len(results.of("d-2")) >= 2)
    assert [r.headers["webhook-id"] for r in sink.requests] == ["d-2", "d-3"]


async def test_429_honours_retry_after_then_5xx_retries_then_sends(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    sink.script.extend([Reply(429, "slow down", {"Retry-After": "1"}), Reply(503, "busy")])
    await _webhook_channel(db, sink)
    await start_dispatcher().wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(js, topology, delivery("d-4", channel="webhook"))

    sent = await results.wait("d-4", "sent")
    assert sent.attempts == 3
    assert [r.headers["webhook-id"] for r in sink.requests] == ["d-4"] * 3
    row = await ledger(db, "d-4")
    assert row is not None
    assert (row["status"], row["attempts"]) == ("sent", 3)


async def test_provider_timeout_is_retried(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    sink.script.append(Reply(stall=True))
    await _webhook_channel(db, sink)
    await start_dispatcher(CAIRN_PROVIDER_TIMEOUT_SECONDS="0.5").wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(js, topology, delivery("d-t", channel="webhook"))

    sent = await results.wait("d-t", "sent")
    assert sent.attempts == 2
    assert [r.headers["webhook-id"] for r in sink.requests] == ["d-t", "d-t"]


async def test_permanent_4xx_fails_without_retry(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    sink.script.append(Reply(400, "bad payload"))
    await _webhook_channel(db, sink)
    await start_dispatcher().wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(js, topology, delivery("d-5", channel="webhook"))

    failed = await results.wait("d-5", "failed")
    assert failed.reason is not None
    assert "400" in failed.reason
    assert len(sink.requests) == 1


async def test_retries_exhausted_go_to_the_dead_letter_stream_with_the_reason(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    sink.default = Reply(500, "down")
    await _webhook_channel(db, sink)
    await start_dispatcher().wait_ready()  # CAIRN_MAX_ATTEMPTS=3
    results = await Results.listen(nc, topology)
    await send_requests(js, topology, delivery("d-6", channel="webhook"))

    dead = await results.wait("d-6", "dead_lettered")
    assert dead.reason is not None
    assert "gave up after 3 attempts" in dead.reason
    assert len(sink.requests) == 3
    sub = await js.pull_subscribe(
        topology.dead_letter_subject(topology.deliveries_stream),
        durable=None,
        stream=topology.dead_letter_stream,
    )
    (msg,) = await sub.fetch(1, timeout=5)
    letter = decode(msg.data)
    assert isinstance(letter, DeadLetter)
    assert "500" in letter.reason


async def test_send_for_an_exited_instance_is_dropped(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    await _webhook_channel(db, sink)
    await db.execute(
        "INSERT INTO journey_instances (instance_id, journey, version, profile_id, status,"
        " started_at) VALUES ('gone', 'abandoned-cart', 1, 'user-1', 'exited', now()),"
        " ('done', 'abandoned-cart', 1, 'user-1', 'completed', now())"
    )
    await start_dispatcher().wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(
        js,
        topology,
        delivery("d-7", channel="webhook", instance_id="gone"),
        delivery("d-8", channel="webhook", instance_id="done"),
    )

    dropped = await results.wait("d-7", "dropped")
    assert dropped.reason == "instance exited"
    await results.wait("d-8", "sent")
    assert [r.headers["webhook-id"] for r in sink.requests] == ["d-8"]


async def test_missing_channel_document_dead_letters_naming_it(
    db: asyncpg.Connection,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    await start_dispatcher().wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(js, topology, delivery("d-9", channel="pigeon"))
    dead = await results.wait("d-9", "dead_lettered")
    assert dead.reason == "no Channel document named 'pigeon' is applied"
