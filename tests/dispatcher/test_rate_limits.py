"""Send-rate limits: one schedule shared by every dispatcher replica, excess sends deferred in
order and never dropped, the delay in the analytics.

Through the real matcher, scheduler and two dispatcher processes: a journey limited to 5/s, a
journey sending through a channel limited to 4/s, and a neighbour journey with no limit whose
sends must not wait behind them. What is asserted is the schedule the database handed out
(slots never closer than the limit, each send at or after its slot), not how fast a shared
machine happened to be."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from nats.js.client import JetStreamContext

from cairn_common.rates import RateError, RateLimit, parse_rate
from cairn_common.topology import Topology
from cairn_control.stats import journey_stats
from cairn_dispatcher.documents import DocumentError, target_from_document
from cairn_dispatcher.handlers import SLOT_SLACK
from cairn_dispatcher.rates import SendRates
from cairn_journey.documents import parse_text
from tests.dispatcher.support import LOOPBACK, HttpSink, apply, eventually
from tests.support.engine import Inputs, metric, prepared, publish_journey
from tests.support.processes import ServiceProcess

P = 4
EPSILON = timedelta(microseconds=2)  # timestamptz keeps microseconds


@pytest.mark.parametrize(
    ("text", "count", "per"),
    [("500/min", 500, 60.0), ("10/s", 10, 1.0), ("1000 per hour", 1000, 3600.0),
     ("100/10m", 100, 600.0), ("3/d", 3, 86400.0)],
)  # fmt: skip
def test_a_rate_reads_as_count_per_period(text: str, count: int, per: float) -> None:
    assert parse_rate(text) == RateLimit(count, per)
    assert parse_rate(str(parse_rate(text))) == parse_rate(text)


@pytest.mark.parametrize(
    ("value", "message"),
    [("fast", "not a rate"), ("0/min", "outside 1..1000000"), ("5/week", "not a period"),
     ("5/0s", "outside 1 s .. 7 d"), (500, "not a rate")],
)  # fmt: skip
def test_a_bad_rate_says_what_is_wrong(value: object, message: str) -> None:
    with pytest.raises(RateError, match=message):
        parse_rate(value)


def test_a_bad_rate_limit_is_named_in_the_journey_and_the_channel() -> None:
    problems = parse_text(
        "kind: Journey\nname: j\ntrigger: A\nrate_limit: lots\nsteps: [{id: w, wait: 1d}]\n", "j"
    ).problems
    assert [(p.path, p.line) for p in problems] == [("rate_limit", 4)]
    assert "not a rate" in problems[0].message
    channel = parse_text(
        "kind: Channel\nname: mail\ntype: email\nprovider: smtp\nendpoint: smtp://m:25\n"
        "options:\n  rate_limit: 9/week\n",
        "c.yaml",
    ).problems
    assert [(p.path, p.line) for p in channel] == [("options.rate_limit", 7)]
    with pytest.raises(DocumentError, match="Channel/mail: rate_limit: 'x' is not a rate"):
        target_from_document("Channel", "mail", {"provider": "webhook", "rate_limit": "x"})
    target = target_from_document(
        "Channel", "mail", {"provider": "webhook", "options": {"rate_limit": "4/s"}}
    )
    assert target.rate_limit == RateLimit(4, 1.0)


async def test_replicas_share_one_schedule(db: asyncpg.Connection, database_url: str) -> None:
    """Two replicas (two pools) reserving at once: every slot of the key is ``spacing`` after
    the one before, whichever replica took it; an idle schedule starts a burst behind now."""
    limit = parse_rate("50/s")
    pools = [await asyncpg.create_pool(database_url, min_size=1, max_size=3) for _ in range(2)]
    try:
        rates = [SendRates(pool) for pool in pools]
        results = await asyncio.gather(
            *(rates[i % 2].reserve([("journey:j", limit, 1 + i % 3)]) for i in range(30))
        )
    finally:
        for pool in pools:
            await pool.close()
    slots = sorted(s for got, _ in results for s in got["journey:j"])
    assert len(slots) == sum(1 + i % 3 for i in range(30)) == len(set(slots))
    step = timedelta(seconds=limit.spacing)
    assert all(b - a >= step - EPSILON for a, b in itertools.pairwise(slots))
    first_now = min(now for _, now in results if now is not None)
    assert slots[0] <= first_now  # the burst: the first sends are due at once
    assert slots[0] >= first_now - timedelta(seconds=limit.tolerance) - EPSILON


def _journey(name: str, channel: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "Journey",
        "name": name,
        "trigger": {"event": f"{name} started"},
        "entry": {"repeat": "always", "unique_by": "n"},
        "steps": [{"id": "msg", "send": {"channel": channel, "template": "body"}}],
        **extra,
    }


async def test_rate_limited_sends_across_two_dispatchers_wait_in_turn_and_none_is_lost(
    db: asyncpg.Connection,
    database_url: str,
    sink: HttpSink,
    js: JetStreamContext,
    topology: Topology,
    spawn: Callable[..., ServiceProcess],
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    pool = await prepared(database_url, js, topology)
    for name, options in (("hook", {}), ("slow-hook", {"rate_limit": "4/s"})):
        await apply(db, "Channel", name, {
            "type": "webhook", "provider": "webhook", "endpoint": f"{sink.url}/{name}",
            "options": {"allow_networks": LOOPBACK, **options},
        })  # fmt: skip
    body = '{"n": "{{ event.properties.n }}"}'
    await apply(db, "Template", "body", {"channel": "webhook", "body": body})
    env = {"CAIRN_PARTITIONS": str(P)}
    matcher = spawn("cairn_matcher", **env)
    dispatchers = [start_dispatcher(**env, CAIRN_FETCH_BATCH="3") for _ in range(2)]
    services = (matcher, spawn("cairn_scheduler", **env), *dispatchers)
    await asyncio.gather(*(s.wait_ready() for s in services))
    journeys = [
        _journey("limited", "hook", rate_limit="5/s"),
        _journey("via-channel", "slow-hook"),
        _journey("neighbour", "hook"),
    ]
    for document in journeys:
        await publish_journey(pool, document)
    await eventually(lambda: _loaded(matcher, 3))
    inputs = Inputs(js, topology, P)
    counts = {"limited": 20, "via-channel": 8, "neighbour": 6}
    for n in range(max(counts.values())):
        for name, count in counts.items():
            if n < count:
                await inputs.send(f"{name}-{n}", f"{name} started", properties={"n": f"{name}-{n}"})

    total = sum(counts.values())
    await eventually(lambda: len(sink.requests) >= total, timeout=90)
    await asyncio.sleep(0.5)
    received = [r.json()["n"] for r in sink.requests]
    assert sorted(received) == sorted(f"{k}-{n}" for k, c in counts.items() for n in range(c))

    rows = await pool.fetch(
        "SELECT journey, status, slot_at, held_since, sent_at FROM delivery_ledger ORDER BY slot_at"
    )
    assert {r["status"] for r in rows} == {"sent"}
    for name, limit in (("limited", parse_rate("5/s")), ("via-channel", parse_rate("4/s"))):
        mine = [r for r in rows if r["journey"] == name]
        slots = [r["slot_at"] for r in mine]
        assert len(slots) == counts[name]
        assert None not in slots
        step = timedelta(seconds=limit.spacing)
        assert all(b - a >= step - EPSILON for a, b in itertools.pairwise(slots)), name
        # Sent at or after its slot, give or take the slack under which a slot counts as due
        # (one machine, one clock; the slot is the database's).
        slack = timedelta(seconds=SLOT_SLACK)
        assert all(r["sent_at"] >= r["slot_at"] - slack for r in mine), name
        held = [r for r in mine if r["held_since"] is not None]
        assert held, f"{counts[name]} sends at once exceed the {limit} burst: some were held"
        stats = await journey_stats(pool, name)
        (msg,) = stats.steps
        assert msg.sends is not None
        assert msg.sends.sent == counts[name]
        assert msg.sends.rate_limited == len(held)
        assert msg.sends.deferred >= len(held)
        assert msg.sends.rate_limit_delay_seconds is not None
        assert msg.sends.rate_limit_delay_seconds > 0
    neighbour = [r for r in rows if r["journey"] == "neighbour"]
    assert [(r["slot_at"], r["held_since"]) for r in neighbour] == [(None, None)] * 6
    # Both replicas took part (each fetches three requests at a time).
    for d in dispatchers:
        assert await metric(d.health_url, "cairn_deliveries_total") > 0
    await pool.close()


async def _loaded(matcher: ServiceProcess, versions: int) -> bool:
    return await metric(matcher.health_url, "cairn_matcher_loaded_versions") >= versions
