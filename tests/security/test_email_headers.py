"""SMTP header injection: a header value from data with a line break fails that delivery at once.

Reproduces the attack through a real dispatcher process and a real SMTP server: a trait ``email``
of ``"victim@example.com\\r\\nReply-To :attacker@evil.example"`` and a subject rendered from an
event property with CR/LF. Each is a permanent failure naming the header (one attempt, never a
retry), nothing reaches the SMTP server for it, and a neighbour's email in the same batch arrives.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from cairn_common.topology import Topology
from tests.dispatcher.support import (
    Results,
    SmtpSink,
    delivery,
    email_channel,
    ledger,
    send_requests,
)
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.e2e

TEMPLATE = {
    "channel": "email",
    "subject": "Your order {{ event.properties.order }}",
    "text": "Thanks for order {{ event.properties.order }}",
}


async def test_line_breaks_in_addresses_and_subjects_fail_at_once_and_neighbours_still_send(
    db: asyncpg.Connection,
    smtp: SmtpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    await email_channel(db, smtp, "order", TEMPLATE)
    await start_dispatcher().wait_ready()
    results = await Results.listen(nc, topology)
    order = {"event": "Order Completed", "properties": {"order": "A-1"}}
    await send_requests(
        js,
        topology,
        delivery(
            "inject-to",
            channel="email",
            template="order",
            address="victim@example.com\r\nReply-To :attacker@evil.example",
            event=order,
        ),
        delivery(
            "inject-subject",
            channel="email",
            template="order",
            address="ada@example.test",
            profile_id="user-2",
            event={"event": "Order Completed", "properties": {"order": "A-2\nBcc: all@evil.test"}},
        ),
        delivery(
            "two-recipients",
            channel="email",
            template="order",
            address="ada@example.test, all@evil.test",
            profile_id="user-3",
            event=order,
        ),
        delivery(
            "neighbour",
            channel="email",
            template="order",
            address="grace@example.test",
            profile_id="user-4",
            event=order,
        ),
    )

    sent = await results.wait("neighbour", "sent")
    assert sent.attempts == 1
    for delivery_id, header in (
        ("inject-to", "To contains a line break"),
        ("inject-subject", "Subject contains a line break"),
        ("two-recipients", "is not a valid email address"),
    ):
        failed = await results.wait(delivery_id, "failed")
        assert failed.reason is not None
        assert header in failed.reason, failed.reason
        assert failed.attempts == 1  # permanent: never retried
        row = await ledger(db, delivery_id)
        assert row is not None
        assert row["status"] == "failed"

    ((_mail_from, rcpts, msg),) = smtp.messages
    assert rcpts == ["grace@example.test"]
    assert msg["Reply-To"] is None
    assert msg["Bcc"] is None
    assert "evil" not in msg.as_string()
