"""Journey analytics end to end: the abandoned-cart journey through real ingest, matcher,
scheduler and dispatcher processes (email over SMTP, SMS over Twilio's API, both to local
servers), an open pixel hit through ingest, then ``cairn stats`` and the admin API."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from nats.js.client import JetStreamContext

from cairn_common.bus import publish
from cairn_common.messages import DeliveryResult
from cairn_common.partitioning import partition_for
from cairn_common.topology import Topology
from tests.control.conftest import run_cli
from tests.dispatcher.support import LOOPBACK, HttpSink, Reply, SmtpSink, apply, eventually
from tests.observability.support import ADMIN_TOKEN, PARTITIONS, System, start_system
from tests.support.engine import prepared, publish_journey
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def abandoned_cart() -> dict[str, Any]:
    """The example journey, with its day-long waits cut to seconds."""
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / "journeys/abandoned-cart.yaml").read_text())
    opened = doc["steps"][1]["wait_for"]
    opened["within"] = "2s"
    opened["timed_out"][1]["wait"] = "1s"
    return doc


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    server = SmtpSink().start()
    yield server
    server.stop()


@pytest.fixture
async def twilio() -> AsyncIterator[HttpSink]:
    server = await HttpSink(Reply(201, {"sid": "SM1", "status": "queued"})).start()
    yield server
    await server.stop()


async def _resources(pool: asyncpg.Pool, smtp: SmtpSink, twilio: HttpSink) -> None:
    async with pool.acquire() as db:
        await apply(db, "Channel", "email", {
            "provider": "smtp", "endpoint": f"smtp://127.0.0.1:{smtp.port}",
            "options": {"starttls": False, "from": "Shop <shop@example.test>"},
        })  # fmt: skip
        await apply(db, "Channel", "sms", {
            "provider": "twilio",
            "options": {"base_url": twilio.url, "allow_networks": LOOPBACK, "account_sid": "AC1",
                        "from": "+15550100", "auth_token": {"env": "TEST_TWILIO_TOKEN"}},
        })  # fmt: skip
        for doc in yaml.safe_load_all(
            (EXAMPLES / "templates/cart-reminder-email.yaml").read_text()
        ):
            await apply(
                db, "Template", doc.pop("name"), {k: v for k, v in doc.items() if k != "kind"}
            )
    await publish_journey(pool, abandoned_cart())


def _cart(user: str, cart: str) -> dict[str, Any]:
    return {
        "userId": user,
        "event": "Cart Abandoned",
        "properties": {"cart_id": cart, "cart_value": 40, "cart_url": f"https://shop.test/{cart}"},
    }


async def _settled(system: System) -> dict[str, Any]:
    """The stats once every instance has ended and every delivery reported back."""
    answer: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal answer
        answer = await system.admin("/v1/journeys/abandoned-cart/stats")
        sends = {s["step_id"]: s["sends"] for s in answer["steps"] if s["sends"]}
        return (
            answer["active"] == 0
            and sends["initial-email"]["sent"] == 2
            and sends["initial-email"]["opened"] == 1
            and sends["text-reminder"]["sent"] == 1
        )

    try:
        await eventually(done, timeout=45)
    except TimeoutError:
        raise AssertionError(f"the stats did not settle: {answer}") from None
    return answer


async def test_the_funnel_counts_each_send_outcome_and_unique_open_once(
    smtp: SmtpSink,
    twilio: HttpSink,
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    pool = await prepared(database_url, js, topology)
    await _resources(pool, smtp, twilio)
    # No scheduler yet: no wait can time out before ann's open is in, however slow the machine.
    system = await start_system(
        spawn, pool, services=("ingest", "matcher", "dispatcher"), TEST_TWILIO_TOKEN="token-1"
    )

    # ann opens the email; bob does not (SMS, then no push token: skipped); cy has no email
    # address (skipped: nothing to open, so on at once to the SMS, skipped too, and the pause)
    # and orders at once (exit + conversion).
    for user, traits in [("ann", {"email": "ann@example.test", "phone": "+15550001"}),
                         ("bob", {"email": "bob@example.test", "phone": "+15550002"})]:  # fmt: skip
        await system.post("/v1/identify", {"userId": user, "traits": traits})
    for user, cart in [("ann", "c1"), ("bob", "c2"), ("cy", "c3")]:
        await system.post("/v1/track", _cart(user, cart))
    await system.post(
        "/v1/track", {"userId": "cy", "event": "Order Completed", "properties": {"cart_id": "c3"}}
    )
    await eventually(lambda: len(smtp.messages) == 2)
    (ann_email,) = [m for _, to, m in smtp.messages if to == ["ann@example.test"]]
    html = ann_email.get_body(("html",))
    assert html is not None
    (pixel,) = re.findall(r'src="(http://127\.0\.0\.1:\d+/t/o/[^"]+)"', html.get_content())
    assert await system.get(pixel) == 200
    assert await system.get(pixel) == 200  # a second mail client loads it too: one unique open
    await eventually(lambda: _status(pool, "c1", "completed"))  # ann's wait_for matched
    await system.start("scheduler")  # bob's wait times out now

    stats = await _settled(system)
    assert (stats["entered"], stats["completed"], stats["converted"]) == (3, 2, 1)
    assert stats["exited"] == {"Order Completed": 1}
    assert (stats["conversion_rate"], stats["goal_target"]) == (33.33, 50.0)
    steps = {s["step_id"]: s for s in stats["steps"]}
    email = steps["initial-email"]["sends"]
    assert (email["requested"], email["sent"], email["opened"], email["clicked"]) == (2, 2, 1, 0)
    assert (email["skipped"], email["reasons"]) == (1, {"skipped": {"no address": 1}})
    assert email["open_rate"] == 50.0
    assert steps["opened"]["counters"] == {
        "reached": 3,
        "matched": 1,
        "timed_out": 1,
        "not_sent": 1,  # the skipped email: nothing to open, its wait ended at once
        "not_sent:skipped": 1,
    }
    sms = steps["text-reminder"]["sends"]
    assert (sms["requested"], sms["sent"], sms["failed"], sms["skipped"]) == (1, 1, 0, 1)
    push = steps["final-push"]["sends"]
    assert (push["requested"], push["sent"], push["skipped"]) == (0, 0, 1)
    (today,) = stats["series"]
    assert today["counters"] == {
        "entered": 3, "completed": 2, "converted": 1, "sent": 3, "opened": 1,
    }  # fmt: skip

    # A delivery result delivered again (as after a dispatcher crash beyond JetStream's
    # duplicate window) changes nothing.
    row = await pool.fetchrow(
        "SELECT de.* FROM delivery_events de JOIN journey_instances ji USING (instance_id) "
        "WHERE ji.profile_id = 'ann' AND de.kind = 'sent'"
    )
    partition = partition_for("ann", int(PARTITIONS))
    again = DeliveryResult(
        delivery_id=row["delivery_id"], profile_id="ann", partition=partition,
        instance_id=row["instance_id"], step_id=row["step_id"], outcome="sent",
        at=datetime.now(UTC), channel="email",
    )  # fmt: skip
    ack = await publish(
        js, topology.input_subject(partition, "result"), again, msg_id=uuid.uuid4().hex
    )
    await eventually(lambda: _applied(pool, partition, ack.seq))
    assert await system.admin("/v1/journeys/abandoned-cart/stats") == stats

    cli = await run_cli("stats", "abandoned-cart", api=system.admin_url, token=ADMIN_TOKEN)
    assert cli.code == 0, cli
    lines = cli.out.splitlines()
    assert "converted 1 (33.33% vs target 50%: below)" in cli.out
    # step, kind, reached, requested, sent, opened, clicked, skipped, failed
    row_of = {cells[0]: cells for cells in map(str.split, lines) if cells[1:2] == ["send"]}
    assert row_of["initial-email"][:9] == [
        "initial-email", "send", "3", "2", "2", "1", "(50%)", "0", "1",
    ]  # fmt: skip
    assert row_of["text-reminder"][:8] == ["text-reminder", "send", "2", "1", "1", "0", "0", "1"]
    assert "initial-email skipped: no address 1" in lines
    assert "final-push skipped: no address 1" in lines
    await pool.close()


async def _status(pool: asyncpg.Pool, cart: str, status: str) -> bool:
    found = await pool.fetchval(
        "SELECT status FROM journey_instances WHERE unique_value = $1", cart
    )
    return bool(found == status)


async def _applied(pool: asyncpg.Pool, partition: int, seq: int) -> bool:
    last = await pool.fetchval(
        "SELECT last_applied_seq FROM partition_leases WHERE partition = $1", partition
    )
    return bool(last is not None and last >= seq)


CRASHED = {
    "kind": "Journey",
    "name": "crashed",
    "trigger": {"event": "Signed Up"},
    "steps": [
        {"id": "welcome", "send": {"channel": "hooks", "template": "hook"}},
        {"id": "pause", "wait": "1s"},
        {"id": "nudge", "send": {"channel": "hooks", "template": "hook"}},
    ],
}


async def test_the_funnel_stays_exact_when_the_matcher_and_dispatcher_are_killed(
    twilio: HttpSink,
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    sink = twilio  # any recording HTTP server does: the journey sends webhooks
    pool = await prepared(database_url, js, topology)
    async with pool.acquire() as db:
        await apply(
            db,
            "Channel",
            "hooks",
            {"provider": "webhook", "endpoint": sink.url, "options": {"allow_networks": LOOPBACK}},
        )
        await apply(db, "Template", "hook", {"channel": "webhook", "body": "{}"})
    await publish_journey(pool, CRASHED)
    system = await start_system(spawn, pool)
    users = [f"u{n}" for n in range(30)]

    async def sign_up(some: list[str]) -> None:
        for user in some:
            await system.post("/v1/track", {"userId": user, "event": "Signed Up"})

    # Each service is killed while inputs are flowing to it, wherever it happens to be.
    await asyncio.gather(sign_up(users[:15]), system.kill_and_restart("matcher"))
    await asyncio.gather(sign_up(users[15:]), system.kill_and_restart("dispatcher"))

    def sent(answer: dict[str, Any], step: str) -> int:
        return int(next(s for s in answer["steps"] if s["step_id"] == step)["sends"]["sent"])

    answer: dict[str, Any] = {}

    async def finished() -> bool:
        nonlocal answer
        answer = await system.admin("/v1/journeys/crashed/stats")
        return answer["completed"] == 30 and sent(answer, "nudge") == 30

    await eventually(finished, timeout=60)
    assert (answer["entered"], answer["active"]) == (30, 0)
    assert (sent(answer, "welcome"), sent(answer, "nudge")) == (30, 30)
    # Each delivery reached the sink at least once (a kill between a send and its ledger write
    # sends it once more, with the same webhook-id); the funnel counts deliveries, not attempts.
    assert len({r.headers["webhook-id"] for r in sink.requests}) == 60
    (day,) = answer["series"]
    assert (day["counters"]["entered"], day["counters"]["sent"]) == (30, 60)
    await pool.close()
