"""Consent, suppressions, frequency caps, quiet hours and template failures, end to end."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from cairn_common.topology import Topology
from tests.dispatcher.support import (
    LOOPBACK,
    HttpSink,
    Results,
    apply,
    delivery,
    ledger,
    send_requests,
)
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.e2e


async def _hook(db: asyncpg.Connection, sink: HttpSink, **policies: object) -> None:
    options = {"allow_networks": LOOPBACK, **policies}
    await apply(
        db,
        "Channel",
        "webhook",
        {
            "type": "webhook",
            "provider": "webhook",
            "endpoint": f"{sink.url}/hook",
            "options": options,
        },
    )
    await apply(
        db,
        "Template",
        "hook-body",
        {"channel": "webhook", "body": '{"code": "{{ profile.code }}"}'},
    )


async def test_unsubscribed_profiles_and_suppressed_ones_are_not_sent(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    await _hook(db, sink)
    await db.execute(
        "INSERT INTO suppressions (profile_id, channel, address, reason)"
        " VALUES ('u-sup', 'webhook', '', 'unsubscribed via link')"
    )
    await start_dispatcher().wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(
        js,
        topology,
        delivery("c-1", channel="webhook", profile={"unsubscribed": True}, profile_id="u-unsub"),
        delivery(
            "c-2",
            channel="webhook",
            profile={"subscriptions": {"webhook": False}},
            profile_id="u-opt",
        ),
        delivery("c-3", channel="webhook", profile_id="u-sup"),
        delivery("c-4", channel="webhook", profile_id="u-ok"),
    )
    assert (await results.wait("c-1", "suppressed")).reason == "profile unsubscribed"
    assert (await results.wait("c-2", "suppressed")).reason == "subscriptions.webhook is False"
    assert (await results.wait("c-3", "suppressed")).reason == "unsubscribed via link"
    await results.wait("c-4", "sent")
    assert [r.headers["webhook-id"] for r in sink.requests] == ["c-4"]


async def test_frequency_cap_skips_sends_over_the_limit_per_profile(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    await _hook(db, sink, frequency_cap={"limit": 2, "per": "1d"})
    await start_dispatcher().wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(js, topology, delivery("f-1", channel="webhook", instance_id="i1"))
    await results.wait("f-1", "sent")
    await send_requests(
        js,
        topology,
        delivery("f-2", channel="webhook", instance_id="i2"),
        delivery("f-3", channel="webhook", instance_id="i3"),
        delivery("f-4", channel="webhook", profile_id="other"),
    )
    await results.wait("f-2", "sent")
    capped = await results.wait("f-3", "skipped")
    assert capped.reason is not None
    assert capped.reason.startswith("frequency cap: 2 per 1 day")
    await results.wait("f-4", "sent")
    assert sorted(r.headers["webhook-id"] for r in sink.requests) == ["f-1", "f-2", "f-4"]


async def test_quiet_hours_defer_to_their_end_in_the_profile_time_zone(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    await start_dispatcher().wait_ready()
    results = await Results.listen(nc, topology)
    now = datetime.now(UTC)
    start = (now - timedelta(minutes=1)).time().isoformat(timespec="seconds")
    end = (now + timedelta(seconds=5)).time().isoformat(timespec="seconds")
    await _hook(db, sink, quiet_hours={"start": start, "end": end, "timezone": "UTC"})
    await send_requests(
        js,
        topology,
        delivery("q-1", channel="webhook", profile={"timezone": "UTC"}),
        delivery(
            "q-2", channel="webhook", profile={"timezone": "Pacific/Kiritimati"}, profile_id="far"
        ),
    )
    deferred = await results.wait("q-1", "deferred")
    assert deferred.reason is not None
    assert deferred.reason.startswith("quiet hours until")
    await results.wait("q-2", "sent")
    assert [r.outcome for r in results.of("q-2")] == ["sent"]
    await results.wait("q-1", "sent")
    assert sorted(r.headers["webhook-id"] for r in sink.requests) == ["q-1", "q-2"]
    row = await ledger(db, "q-1")
    assert row is not None
    assert row["status"] == "sent"


async def test_template_that_cannot_render_dead_letters_that_delivery_only(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    await _hook(db, sink)
    await apply(
        db,
        "Channel",
        "sms",
        {
            "provider": "twilio",
            "options": {
                "base_url": sink.url,
                "allow_networks": LOOPBACK,
                "account_sid": "AC1",
                "auth_token": {"env": "TEST_API_KEY"},
                "from": "+1",
            },
        },
    )
    await apply(db, "Template", "code-sms", {"channel": "sms", "body": "{{ profile.code }}"})
    await start_dispatcher().wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(
        js,
        topology,
        delivery("t-1", channel="sms", template="code-sms", address="+1555"),
        delivery("t-2", channel="sms", template="no-such-template", address="+1555"),
        delivery("t-3", channel="webhook", template="hook-body", profile={"code": "X1"}),
    )
    dead = await results.wait("t-1", "dead_lettered")
    assert dead.reason == "template 'code-sms': body: rendered empty for this profile"
    missing = await results.wait("t-2", "dead_lettered")
    assert (
        missing.reason
        == "template 'no-such-template': no Template document named 'no-such-template'"
    )
    await results.wait("t-3", "sent")
    assert [r.json() for r in sink.requests] == [{"code": "X1"}]


async def test_profile_without_an_address_is_skipped_with_the_reason(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    await apply(
        db,
        "Channel",
        "sms",
        {
            "provider": "twilio",
            "options": {
                "base_url": sink.url,
                "allow_networks": LOOPBACK,
                "account_sid": "AC1",
                "auth_token": {"env": "TEST_API_KEY"},
                "from": "+1",
            },
        },
    )
    await apply(db, "Template", "hi-sms", {"channel": "sms", "body": "hi"})
    await start_dispatcher().wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(
        js, topology, delivery("a-1", channel="sms", template="hi-sms", to="profile.phone")
    )
    skipped = await results.wait("a-1", "skipped")
    assert skipped.reason == "no address in profile.phone"
    assert sink.requests == []
