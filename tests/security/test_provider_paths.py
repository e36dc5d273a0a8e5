"""Data in a provider's URL path stays one segment: no path traversal with a destination's keys.

The issue's case: a profile id ``../../../v2/entity#`` put unescaped into Customer.io's
``/api/v1/customers/{id}/events`` reached another endpoint with the site's credentials. Through a
real dispatcher and a real HTTP server standing in for Customer.io: the id arrives encoded as one
segment of the customers endpoint, a bare dot segment fails at once, and a neighbour's event
is delivered.
"""

from __future__ import annotations

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


async def test_profile_ids_cannot_leave_their_path_segment(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    sink.default = Reply(200, {})
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
                "api_key": {"env": "TEST_API_KEY"},
            },
        },
    )
    await start_dispatcher().wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(
        js,
        topology,
        delivery("traversal", destination="cio", profile_id="../../../v2/entity#"),
        delivery("dots", destination="cio", profile_id=".."),
        delivery("query", destination="cio", profile_id="u?x=1&y=%2F"),
        delivery("neighbour", destination="cio", profile_id="ada"),
    )
    for delivery_id in ("traversal", "query", "neighbour"):
        await results.wait(delivery_id, "sent")
    failed = await results.wait("dots", "failed")
    assert failed.reason is not None
    assert "cannot be a URL path segment" in failed.reason
    assert failed.attempts == 1

    raw = sorted(r.raw_path for r in sink.requests)
    assert raw == [
        "/api/v1/customers/..%2F..%2F..%2Fv2%2Fentity%23/events",
        "/api/v1/customers/ada/events",
        "/api/v1/customers/u%3Fx=1&y=%252F/events",  # = and & are path characters
    ]
    assert all(r.query == {} for r in sink.requests)
