"""Waits count from the real send, through the real matcher, scheduler and dispatcher.

The abandoned-cart journey shortened to seconds: ``email`` (a webhook channel standing for the
email provider), ``wait_for Email Opened of: email``, then ``sms``. The email channel's policies
(quiet hours, a frequency cap) make the dispatcher send it late or not at all; the customer's
window must not shrink either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from nats.js.client import JetStreamContext

from cairn_common.topology import Topology
from tests.dispatcher.support import LOOPBACK, HttpSink, Recorded, apply, eventually
from tests.support.engine import Inputs, metric, prepared, publish_journey
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.e2e

P = 4
WINDOW = 6  # seconds: "within 1 d" shortened


def cart_journey(within: str) -> dict[str, Any]:
    return {
        "kind": "Journey",
        "name": "cart-windows",
        "trigger": {"event": "Cart Abandoned"},
        "entry": {"repeat": "always", "unique_by": "cart_id"},
        "exit": [{"event": "Order Completed", "match": "cart_id"}],
        "steps": [
            {"id": "email", "send": {"channel": "mail", "template": "mail-body"}},
            {
                "id": "opened",
                "wait_for": {
                    "event": "Email Opened",
                    "of": "email",
                    "within": within,
                    "timed_out": [{"id": "sms", "send": {"channel": "text", "template": "t"}}],
                },
            },
        ],
    }


async def _channels(db: asyncpg.Connection, sink: HttpSink, **mail_policies: Any) -> None:
    for name, path, policies in (("mail", "/mail", mail_policies), ("text", "/text", {})):
        await apply(
            db,
            "Channel",
            name,
            {
                "type": "webhook",
                "provider": "webhook",
                "endpoint": f"{sink.url}{path}",
                "options": {"allow_networks": LOOPBACK, **policies},
            },
        )
    body = '{"cart": "{{ event.properties.cart_id }}", "profile": "{{ profile.name }}"}'
    for template in ("mail-body", "t"):
        await apply(db, "Template", template, {"channel": "webhook", "body": body})


async def _system(
    database_url: str,
    js: JetStreamContext,
    topology: Topology,
    spawn: Callable[..., ServiceProcess],
    start_dispatcher: Callable[..., ServiceProcess],
    journey: dict[str, Any],
) -> tuple[asyncpg.Pool, Inputs]:
    pool = await prepared(database_url, js, topology)
    env = {"CAIRN_PARTITIONS": str(P)}
    matcher = spawn("cairn_matcher", **env)
    services = [matcher, spawn("cairn_scheduler", **env), start_dispatcher(**env)]
    await asyncio.gather(*(s.wait_ready() for s in services))
    await publish_journey(pool, journey)
    await eventually(
        lambda: _at_least(metric(matcher.health_url, "cairn_matcher_loaded_versions"), 1)
    )
    return pool, Inputs(js, topology, P)


async def _at_least(value: Any, expected: float) -> bool:
    return bool(await value >= expected)


def _arrivals(sink: HttpSink, path: str) -> dict[str, tuple[datetime, Recorded]]:
    """Per cart, when the sink received its message on ``path`` (the moment it was sent)."""
    return {r.json()["cart"]: (r.at, r) for r in sink.requests if r.path == path}


async def test_quiet_hours_on_the_email_never_shorten_the_open_window(
    db: asyncpg.Connection,
    database_url: str,
    sink: HttpSink,
    js: JetStreamContext,
    topology: Topology,
    spawn: Callable[..., ServiceProcess],
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    """The email is held by quiet hours for longer than the whole window. Counted from the
    request, the window would be over before the email went out and both customers would get
    the text at once; counted from the sending, the one who opens gets nothing more and the
    other gets the text a full window after the email reached them."""
    pool, inputs = await _system(
        database_url, js, topology, spawn, start_dispatcher, cart_journey(f"{WINDOW}s")
    )
    now = datetime.now(UTC)  # the dispatcher reads channels afresh: quiet from now on
    quiet = {
        "start": (now - timedelta(minutes=1)).time().isoformat(timespec="seconds"),
        "end": (now + timedelta(seconds=WINDOW + 3)).time().isoformat(timespec="seconds"),
        "timezone": "UTC",
    }
    await _channels(db, sink, quiet_hours=quiet)
    for pid in ("ann", "bob"):
        await inputs.identify(pid, name=pid, timezone="UTC")
        await inputs.send(pid, "Cart Abandoned", properties={"cart_id": f"c-{pid}"})
    requested = datetime.now(UTC)

    await eventually(lambda: "c-ann" in _arrivals(sink, "/mail"), timeout=60)
    emailed_ann, mail = _arrivals(sink, "/mail")["c-ann"]
    assert emailed_ann - requested >= timedelta(seconds=WINDOW), "quiet hours held the email"
    await asyncio.sleep(1)  # ann reads it a second after it arrived
    await inputs.send("ann", "Email Opened", properties={"delivery_id": mail.headers["webhook-id"]})

    await eventually(lambda: "c-bob" in _arrivals(sink, "/text"), timeout=60)
    emailed_bob = _arrivals(sink, "/mail")["c-bob"][0]
    texted_bob = _arrivals(sink, "/text")["c-bob"][0]
    assert texted_bob - emailed_bob >= timedelta(seconds=WINDOW), "a whole window after sending"
    await eventually(lambda: _instance_ended(pool, "c-ann"))
    assert "c-ann" not in _arrivals(sink, "/text"), "ann opened within the window: no text"
    await eventually(lambda: _counted(pool, "opened", "timed_out"))
    counters = await _counters(pool, "opened")
    assert counters.get("matched") == 1
    assert counters.get("timed_out") == 1
    await pool.close()


async def test_a_frequency_capped_email_ends_the_open_wait_at_once(
    db: asyncpg.Connection,
    database_url: str,
    sink: HttpSink,
    js: JetStreamContext,
    topology: Topology,
    spawn: Callable[..., ServiceProcess],
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    """The second cart's email is skipped by the cap (one email a day): there is nothing to
    open, so the wait (an hour here) ends at once on its timed_out path, with the reason."""
    pool, inputs = await _system(
        database_url, js, topology, spawn, start_dispatcher, cart_journey("1h")
    )
    await _channels(db, sink, frequency_cap={"limit": 1, "per": "1d"})
    await inputs.identify("cy", name="cy")
    await inputs.send("cy", "Cart Abandoned", properties={"cart_id": "c-1"})
    await eventually(lambda: "c-1" in _arrivals(sink, "/mail"))
    await inputs.send("cy", "Cart Abandoned", properties={"cart_id": "c-2"})

    await eventually(lambda: "c-2" in _arrivals(sink, "/text"))  # far less than the hour
    assert "c-2" not in _arrivals(sink, "/mail")
    assert "c-1" not in _arrivals(sink, "/text"), "the first cart still waits for its open"
    await eventually(lambda: _counted(pool, "opened", "not_sent"))
    counters = await _counters(pool, "opened")
    assert counters.get("not_sent") == 1
    assert counters.get("not_sent:skipped") == 1
    assert "timed_out" not in counters
    await pool.close()


async def _instance_ended(pool: asyncpg.Pool, cart: str) -> bool:
    status = await pool.fetchval(
        "SELECT status FROM journey_instances WHERE unique_value = $1", cart
    )
    return status in ("completed", "exited")


async def _counters(pool: asyncpg.Pool, step_id: str) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT counter, sum(n)::int AS n FROM journey_stats WHERE step_id = $1 GROUP BY counter",
        step_id,
    )
    return {r["counter"]: r["n"] for r in rows}


async def _counted(pool: asyncpg.Pool, step_id: str, counter: str) -> bool:
    return counter in await _counters(pool, step_id)
