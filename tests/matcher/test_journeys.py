"""Journeys end to end through the real matcher and scheduler processes, durations shortened to
seconds. Events go straight into the inputs stream (as ingest puts them); delivery requests are
taken off the dispatcher's consumer and recorded."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from nats.js.client import JetStreamContext

from cairn_common.topology import Topology
from tests.support.engine import (
    Deliveries,
    Inputs,
    metric,
    prepared,
    publish_journey,
    stop_journey,
    wait_for_rows,
)
from tests.support.processes import ServiceProcess

P = 4

CART: dict[str, Any] = {
    "kind": "Journey",
    "name": "abandoned-cart",
    "trigger": {
        "event": "Cart Abandoned",
        "where": [{"property": "cart_value", "op": "gt", "value": 0}],
    },
    "entry": {"repeat": "always", "unique_by": "cart_id"},
    "exit": [{"event": "Order Completed", "match": "cart_id"}],
    "goal": {"event": "Order Completed", "match": "cart_id", "target": "50%"},
    "steps": [
        {
            "id": "initial-email",
            "send": {"channel": "email", "template": "cart-email", "to": "profile.email"},
        },
        {
            "id": "opened",
            "wait_for": {
                "event": "Email Opened",
                "of": "initial-email",
                "within": "2s",
                "timed_out": [
                    {
                        "id": "text-reminder",
                        "send": {"channel": "sms", "template": "cart-sms", "to": "profile.phone"},
                    },
                    {"id": "pause", "wait": "3s"},
                    {
                        "id": "final-push",
                        "send": {
                            "channel": "push",
                            "template": "cart-push",
                            "to": "profile.push_token",
                        },
                    },
                ],
            },
        },
    ],
}

APPLICATION: dict[str, Any] = {
    "kind": "Journey",
    "name": "application-reminders",
    "trigger": {"event": "Application Started"},
    "entry": {"repeat": "always", "unique_by": "application_id"},
    "exit": [{"event": "Application Completed", "match": "application_id"}],
    "goal": {"event": "Application Completed", "match": "application_id", "target": "40%"},
    "steps": [
        {"id": "wait-a-day", "wait": "1s"},
        {"id": "reminder", "send": {"destination": "braze", "template": "application-reminder"}},
    ],
}


def welcome(**entry: Any) -> dict[str, Any]:
    return {
        "kind": "Journey",
        "name": "welcome",
        "trigger": {"event": "Signed Up"},
        "entry": entry,
        "steps": [
            {"id": "hello", "send": {"channel": "email", "template": "hi", "to": "profile.email"}}
        ],
    }


class Engine:
    def __init__(
        self, pool: asyncpg.Pool, inputs: Inputs, deliveries: Deliveries, matcher: ServiceProcess
    ) -> None:
        self.pool = pool
        self.inputs = inputs
        self.deliveries = deliveries
        self.matcher = matcher
        self.versions = 0

    async def publish(self, document: dict[str, Any]) -> None:
        """Publish, then wait until the matcher has reloaded (so the next event sees it)."""
        await publish_journey(self.pool, document)
        self.versions += 1
        async with asyncio.timeout(15):
            while await metric(self.matcher.health_url, "cairn_matcher_loaded_versions") < (
                self.versions
            ):
                await asyncio.sleep(0.05)

    async def customer(self, pid: str) -> None:
        await self.inputs.identify(
            pid, email=f"{pid}@example.com", phone="+15550100", push_token=f"tok-{pid}"
        )

    async def status(self, unique_value: str) -> str | None:
        status: str | None = await self.pool.fetchval(
            "SELECT status FROM journey_instances WHERE unique_value = $1", unique_value
        )
        return status

    async def until_status(self, unique_value: str, status: str, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while await self.status(unique_value) != status:
                await asyncio.sleep(0.1)

    async def instances(self, journey: str) -> int:
        count: int = await self.pool.fetchval(
            "SELECT count(*) FROM journey_instances WHERE journey = $1", journey
        )
        return count


@contextlib.asynccontextmanager
async def running_engine(
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
    **matcher_env: str,
) -> AsyncIterator[Engine]:
    """A matcher (with ``matcher_env``) and a scheduler, a stand-in dispatcher, a pool."""
    pool = await prepared(database_url, js, topology)
    matcher = spawn("cairn_matcher", CAIRN_PARTITIONS=str(P), **matcher_env)
    scheduler = spawn("cairn_scheduler", CAIRN_PARTITIONS=str(P))
    await asyncio.gather(matcher.wait_ready(), scheduler.wait_ready())
    deliveries = await Deliveries(js, topology, P).start()
    try:
        yield Engine(pool, Inputs(js, topology, P), deliveries, matcher)
    finally:
        await deliveries.stop()
        await pool.close()


@pytest.fixture
async def engine(
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> AsyncIterator[Engine]:
    async with running_engine(spawn, js, topology, database_url) as engine:
        yield engine


async def test_cart_email_opened_in_time_sends_no_sms(engine: Engine) -> None:
    await engine.publish(CART)
    await engine.customer("ann")
    await engine.inputs.send(
        "ann", "Cart Abandoned", properties={"cart_id": "c1", "cart_value": 30}
    )
    [email] = await engine.deliveries.until(1)
    assert (email.step_id, email.channel, email.address) == ("initial-email", "email",
                                                            "ann@example.com")  # fmt: skip
    await engine.inputs.send("ann", "Email Opened", properties={"delivery_id": email.delivery_id})

    await engine.until_status("c1", "completed")
    await asyncio.sleep(2.5)  # past the 2 s window: a timer that was not cancelled would fire
    assert [d.step_id for d in await engine.deliveries.settle()] == ["initial-email"]
    assert await engine.pool.fetchval("SELECT count(*) FROM timers") == 0


async def test_cart_not_opened_sends_sms_then_push_after_the_pause(engine: Engine) -> None:
    await engine.publish(CART)
    await engine.customer("bob")
    await engine.inputs.send("bob", "Cart Abandoned", properties={"cart_id": "c2", "cart_value": 5})

    await engine.until_status("c2", "completed")
    seen = await engine.deliveries.settle()
    assert [(d.step_id, d.channel, d.address) for d in seen] == [
        ("initial-email", "email", "bob@example.com"),
        ("text-reminder", "sms", "+15550100"),
        ("final-push", "push", "tok-bob"),
    ]
    assert seen[2].requested_at - seen[1].requested_at >= timedelta(seconds=3)


async def test_order_completed_mid_way_exits_and_converts_with_an_sms_already_queued(
    engine: Engine,
) -> None:
    await engine.publish(CART)
    await engine.customer("cy")
    await engine.inputs.send("cy", "Cart Abandoned", properties={"cart_id": "c3", "cart_value": 9})
    await engine.deliveries.until(2)  # the email, then the SMS after 2 s unopened: both queued
    await engine.inputs.send("cy", "Order Completed", properties={"cart_id": "c3"})

    await engine.until_status("c3", "exited")
    row = await engine.pool.fetchrow(
        "SELECT exit_reason, converted_at FROM journey_instances WHERE unique_value = 'c3'"
    )
    assert row["converted_at"] is not None, "the goal counts even though the exit ends it"
    assert row["exit_reason"] == "exit:Order Completed"
    await asyncio.sleep(3.5)  # past the pause: its timer was void when the instance exited
    assert [d.step_id for d in await engine.deliveries.settle()] == [
        "initial-email",
        "text-reminder",
    ]
    assert await engine.pool.fetchval("SELECT count(*) FROM timers") == 0


async def test_two_applications_run_as_two_instances_and_completing_one_exits_only_it(
    engine: Engine,
) -> None:
    await engine.publish(APPLICATION)
    await engine.customer("dee")
    for app in ("a1", "a2"):
        await engine.inputs.send("dee", "Application Started", properties={"application_id": app})
    await engine.inputs.send("dee", "Application Completed", properties={"application_id": "a1"})

    await engine.until_status("a2", "completed")
    assert await engine.status("a1") == "exited"
    [reminder] = await engine.deliveries.settle()
    assert (reminder.step_id, reminder.destination, reminder.unique_value) == (
        "reminder", "braze", "a2",
    )  # fmt: skip


async def test_entry_once_never_lets_a_profile_in_again(engine: Engine) -> None:
    await engine.publish(welcome(repeat="once"))
    await engine.customer("eve")
    for _ in range(3):
        await engine.inputs.send("eve", "Signed Up")
    await engine.customer("fay")
    await engine.inputs.send("fay", "Signed Up")

    await wait_for_rows(
        engine.pool, "SELECT count(*) FROM journey_instances WHERE profile_id = 'fay'", expect=1
    )
    seen = await engine.deliveries.settle()
    assert sorted(d.profile_id for d in seen) == ["eve", "fay"]
    assert await engine.instances("welcome") == 2


async def test_entry_after_a_cool_down_lets_the_profile_in_again_only_once_it_passed(
    engine: Engine,
) -> None:
    await engine.publish(welcome(repeat={"after": "3s"}))
    await engine.customer("gus")
    await engine.inputs.send("gus", "Signed Up")
    await engine.inputs.send("gus", "Signed Up")  # inside the cool-down: ignored
    await engine.deliveries.until(1)
    await asyncio.sleep(3.2)
    await engine.inputs.send("gus", "Signed Up")

    await engine.deliveries.until(2)
    assert len(await engine.deliveries.settle()) == 2
    assert await engine.instances("welcome") == 2


async def test_entries_are_accepted_only_between_start_at_and_end_at(engine: Engine) -> None:
    now = datetime.now(UTC)
    window = {"repeat": "always"}
    past = {**welcome(**window, end_at=(now - timedelta(hours=1)).isoformat()), "name": "past"}
    future = {**welcome(**window, start_at=(now + timedelta(hours=1)).isoformat()),
              "name": "future"}  # fmt: skip
    open_now = {
        **welcome(
            **window,
            start_at=(now - timedelta(hours=1)).isoformat(),
            end_at=(now + timedelta(hours=1)).isoformat(),
        ),
        "name": "open",
    }
    for journey in (past, future, open_now):
        await engine.publish(journey)
    await engine.customer("hal")
    await engine.inputs.send("hal", "Signed Up")

    [hello] = await engine.deliveries.until(1)
    assert hello.journey == "open"
    assert len(await engine.deliveries.settle()) == 1
    assert await engine.instances("past") == await engine.instances("future") == 0


async def test_a_stopped_journey_takes_no_new_entries_and_running_instances_drain(
    engine: Engine,
) -> None:
    slow = {**welcome(repeat="always"), "steps": [
        {"id": "pause", "wait": "2s"},
        {"id": "hello", "send": {"channel": "email", "template": "hi", "to": "profile.email"}},
    ]}  # fmt: skip
    await engine.publish(slow)
    await engine.customer("ida")
    await engine.inputs.send("ida", "Signed Up")
    await wait_for_rows(engine.pool, "SELECT count(*) FROM journey_instances", expect=1)
    await stop_journey(engine.pool, "welcome")
    async with asyncio.timeout(15):
        while await metric(engine.matcher.health_url, "cairn_matcher_live_journeys") != 0:
            await asyncio.sleep(0.05)
    await engine.inputs.send("ida", "Signed Up")

    [hello] = await engine.deliveries.until(1)
    assert hello.step_id == "hello", "the instance already running finishes its course"
    await wait_for_rows(
        engine.pool, "SELECT count(*) FROM journey_instances WHERE status = 'completed'", expect=1
    )
    assert await engine.instances("welcome") == 1, "no entry after the stop"


async def test_a_new_version_takes_new_entries_while_running_instances_finish_on_theirs(
    engine: Engine,
) -> None:
    def version(send_step: str) -> dict[str, Any]:
        return {
            **welcome(repeat="always", unique_by="signup_id"),
            "steps": [
                {"id": "pause", "wait": "2s"},
                {"id": send_step, "send": {"channel": "email", "template": "hi",
                                           "to": "profile.email"}},
            ],
        }  # fmt: skip

    await engine.publish(version("hello-v1"))
    await engine.customer("jo")
    await engine.inputs.send("jo", "Signed Up", properties={"signup_id": "s1"})
    await wait_for_rows(engine.pool, "SELECT count(*) FROM journey_instances", expect=1)
    await publish_journey(engine.pool, version("hello-v2"), version=2)
    engine.versions += 1
    async with asyncio.timeout(15):
        while await metric(engine.matcher.health_url, "cairn_matcher_loaded_versions") < 2:
            await asyncio.sleep(0.05)
    await engine.inputs.send("jo", "Signed Up", properties={"signup_id": "s2"})

    seen = await engine.deliveries.until(2)
    assert sorted((d.unique_value, d.version, d.step_id) for d in seen) == [
        ("s1", 1, "hello-v1"),
        ("s2", 2, "hello-v2"),
    ]


async def test_an_update_step_writes_the_traits_other_journeys_read_in_the_same_commit(
    engine: Engine,
) -> None:
    counter = {
        "kind": "Journey",
        "name": "counter",
        "trigger": {"event": "Cart Abandoned"},
        "steps": [
            {
                "id": "mark",
                "update": {
                    "set": {"reminded": True, "last_cart": {"from": "event.properties.cart_id"}},
                    "increment": {"carts": 1},
                    "unset": ["cleared_at"],
                },
            }
        ],
    }
    follower = {
        **welcome(),
        "name": "pricing",
        "trigger": {
            "event": "Page Viewed",
            "where": [
                {"property": "name", "op": "eq", "value": "Pricing"},
                {"property": "profile.carts", "op": "gte", "value": 2},
            ],
        },
    }
    await engine.publish(counter)
    await engine.publish(follower)
    await engine.customer("kim")
    await engine.inputs.identify("kim", cleared_at="2026-01-01")
    for cart in ("k1", "k2"):
        await engine.inputs.send("kim", "Cart Abandoned", properties={"cart_id": cart})
    await wait_for_rows(
        engine.pool,
        "SELECT count(*) FROM profiles WHERE profile_id = 'kim' AND traits->>'carts' = '2'",
        expect=1,
    )
    traits = json.loads(
        await engine.pool.fetchval("SELECT traits FROM profiles WHERE profile_id = 'kim'")
    )
    assert traits["reminded"] is True
    assert traits["last_cart"] == "k2"
    assert "cleared_at" not in traits
    assert traits["email"] == "kim@example.com", "identify traits are kept"
    await engine.inputs.send("kim", "Pricing", type="page")
    [hello] = await engine.deliveries.until(1)
    assert (hello.journey, hello.profile["carts"], hello.profile["id"]) == ("pricing", 2, "kim")


HOLD_UNTIL: dict[str, Any] = {
    "kind": "Journey",
    "name": "hold-until",
    "trigger": {"event": "Cart Abandoned"},
    "entry": {"repeat": "always", "unique_by": "cart_id"},
    "steps": [
        {"id": "email", "send": {"channel": "email", "template": "e", "to": "profile.email"}},
        {
            "id": "hold",
            "wait_for": {
                "within": "4s",
                "events": [
                    {
                        "name": "clicked",
                        "event": "Email Link Clicked",
                        "of": "email",
                        "steps": [{"id": "thanks", "send": {"channel": "email", "template": "t",
                                                            "to": "profile.email"}}],
                    },
                    {
                        "name": "ordered",
                        "event": "Order Completed",
                        "match": "cart_id",
                        "steps": [{"id": "receipt", "send": {"channel": "email", "template": "r",
                                                             "to": "profile.email"}}],
                    },
                    {"name": "support", "event": "Ticket Opened", "match": "cart_id"},
                ],
                "reset_on": [{"event": "Cart Modified", "match": "cart_id"}],
                "timed_out": [{"id": "sms", "send": {"channel": "sms", "template": "s",
                                                     "to": "profile.phone"}}],
            },
        },
    ],
}  # fmt: skip


async def test_a_three_path_hold_until_takes_the_first_event_and_a_reset_restarts_it(
    engine: Engine,
) -> None:
    await engine.publish(HOLD_UNTIL)
    for pid in ("dan", "eve", "fay", "gus"):
        await engine.customer(pid)
        await engine.inputs.send(pid, "Cart Abandoned", properties={"cart_id": f"c-{pid}"})
    emails = {d.profile_id: d for d in await engine.deliveries.until(4)}
    await engine.inputs.send("eve", "Ticket Opened", properties={"cart_id": "c-eve"})
    await engine.inputs.send(
        "gus", "Email Link Clicked", properties={"delivery_id": emails["gus"].delivery_id}
    )
    await asyncio.sleep(2.5)
    await engine.inputs.send("dan", "Cart Modified", properties={"cart_id": "c-dan"})  # reset
    await asyncio.sleep(2.5)  # dan's first window (4 s) is over: only the reset keeps him
    await engine.inputs.send("dan", "Order Completed", properties={"cart_id": "c-dan"})
    for cart in ("c-dan", "c-eve", "c-fay", "c-gus"):
        await engine.until_status(cart, "completed")
    await engine.deliveries.settle()
    assert {pid: engine.deliveries.steps(pid) for pid in ("dan", "eve", "fay", "gus")} == {
        "dan": ["email", "receipt"],
        "eve": ["email"],
        "fay": ["email", "sms"],
        "gus": ["email", "thanks"],
    }
    rows = await engine.pool.fetch(
        "SELECT counter, sum(n)::int AS n FROM journey_stats"
        " WHERE journey = 'hold-until' AND step_id = 'hold' GROUP BY counter"
    )
    counters = {r["counter"]: r["n"] for r in rows}
    assert {k: counters.get(k) for k in (
        "matched", "matched:ordered", "matched:support", "matched:clicked", "reset", "timed_out"
    )} == {
        "matched": 3, "matched:ordered": 1, "matched:support": 1, "matched:clicked": 1,
        "reset": 1, "timed_out": 1,
    }  # fmt: skip
