"""The dispatcher under bad input and faults: what goes wrong with one delivery is that delivery's
outcome, what was sent is recorded once, and outages of NATS or PostgreSQL are ridden out without
a restart (issue 10, case 4). Real dispatcher process, real NATS, PostgreSQL and provider servers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from cairn_cli.local import LocalNats, LocalPostgres
from cairn_common.bus import provision_topology, publish
from cairn_common.messages import DeliveryRequested
from cairn_common.topology import Topology
from cairn_control.deadletters import redrive
from tests.dispatcher.support import (
    LOOPBACK,
    HttpSink,
    Results,
    SmtpSink,
    apply,
    delivery,
    email_channel,
    eventually,
    ledger,
    prepare_database,
    send_requests,
)
from tests.support.engine import dead_letters
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.e2e

TEMPLATE = {"channel": "email", "subject": "Your cart", "html": "<p>Hi</p>", "text": "Hi"}


async def webhook_channel(db: asyncpg.Connection, sink: HttpSink) -> None:
    await apply(
        db,
        "Channel",
        "webhook",
        {"provider": "webhook", "options": {"allow_networks": LOOPBACK, "url": f"{sink.url}/hook"}},
    )


def email(delivery_id: str, address: str, profile_id: str = "user-1") -> DeliveryRequested:
    return delivery(
        delivery_id, channel="email", template="t", address=address, profile_id=profile_id
    )


def alive(service: ServiceProcess) -> bool:
    return service.proc is not None and service.proc.poll() is None


def webhook_ids(sink: HttpSink) -> list[str]:
    return sorted(r.headers["webhook-id"] for r in sink.requests)


async def test_a_nul_in_an_address_fails_that_delivery_alone(
    db: asyncpg.Connection,
    smtp: SmtpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    """Three requests in one batch, the middle one's address holding a NUL (only a forged request
    can: ingest refuses NULs). Its neighbours are sent once each; it fails with a reason naming
    the NUL, recorded in the ledger; the dispatcher stays up."""
    await email_channel(db, smtp, "t", TEMPLATE)
    await provision_topology(js, topology)  # the batch waits in the stream: fetched as one
    await send_requests(
        js,
        topology,
        email("ok-1", "ada@example.test"),
        email("bad", "eve\x00@example.test", profile_id="user-2"),
        email("ok-2", "bob@example.test", profile_id="user-3"),
    )
    dispatcher = start_dispatcher()
    results = await Results.listen(nc, topology)
    await dispatcher.wait_ready()

    failed = await results.wait("bad", "failed")
    assert failed.reason is not None
    assert "NUL" in failed.reason
    await results.wait("ok-1", "sent")
    await results.wait("ok-2", "sent")
    assert sorted(rcpt for _, (rcpt,), _ in smtp.messages) == [
        "ada@example.test",
        "bob@example.test",
    ]
    row = await ledger(db, "bad")
    assert row is not None
    assert (row["status"], row["address"]) == ("failed", "eve\ufffd@example.test")
    assert alive(dispatcher)


async def test_a_ledger_row_refused_after_the_provider_calls_costs_only_its_delivery(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    """The database refuses one delivery's ledger row after all three were sent (it took the
    claim made before the send, not the outcome). The other two are recorded and acknowledged;
    the refused one is dead-lettered with the database's reason (never redelivered, so never
    sent again); nothing is sent twice."""
    await webhook_channel(db, sink)
    await db.execute(
        "ALTER TABLE delivery_ledger ADD CONSTRAINT refuses_k2"
        " CHECK (delivery_id <> 'k-2' OR status = 'sending')"
    )
    await provision_topology(js, topology)
    await send_requests(
        js,
        topology,
        *(delivery(f"k-{n}", channel="webhook", profile_id=f"user-{n}") for n in (1, 2, 3)),
    )
    dispatcher = start_dispatcher()
    results = await Results.listen(nc, topology)
    await dispatcher.wait_ready()

    await results.wait("k-1", "sent")
    await results.wait("k-3", "sent")
    await eventually(lambda: len(results.of("k-2")) > 0)
    [letter] = await dead_letters(js, topology, topology.deliveries_stream)
    assert "its ledger row was refused" in letter.reason
    assert "refuses_k2" in letter.reason
    assert await ledger(db, "k-1") is not None
    row = await ledger(db, "k-2")
    assert row is not None
    assert row["status"] == "sending"  # its claim, never its outcome
    # Past the consumer's ack wait: nothing was redelivered and sent again.
    await asyncio.sleep(3)
    assert webhook_ids(sink) == ["k-1", "k-2", "k-3"]
    assert alive(dispatcher)


async def test_a_delivery_whose_claim_the_database_refuses_is_dead_lettered_unsent(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    """No row of one delivery can be stored, not even the claim made before its provider call:
    it is dead-lettered with the database's reason and never sent (nothing would record the
    send); its neighbours in the batch are claimed, sent and recorded."""
    await webhook_channel(db, sink)
    await db.execute(
        "ALTER TABLE delivery_ledger ADD CONSTRAINT refuses_c2 CHECK (delivery_id <> 'c-2')"
    )
    await provision_topology(js, topology)
    await send_requests(
        js,
        topology,
        *(delivery(f"c-{n}", channel="webhook", profile_id=f"user-{n}") for n in (1, 2, 3)),
    )
    dispatcher = start_dispatcher()
    results = await Results.listen(nc, topology)
    await dispatcher.wait_ready()

    await results.wait("c-1", "sent")
    await results.wait("c-3", "sent")
    await eventually(lambda: len(results.of("c-2")) > 0)
    [letter] = await dead_letters(js, topology, topology.deliveries_stream)
    assert letter.reason.startswith("its ledger row was refused: CheckViolationError")
    assert "refuses_c2" in letter.reason
    assert await ledger(db, "c-2") is None
    await asyncio.sleep(3)  # past the ack wait: not redelivered, never sent
    assert webhook_ids(sink) == ["c-1", "c-3"]
    assert alive(dispatcher)


@pytest.fixture
async def own_postgres(tmp_path: Path) -> AsyncIterator[LocalPostgres]:
    """A PostgreSQL of this test alone, so it can be stopped and started again (same port)."""
    server = LocalPostgres(tmp_path / "pg", fsync=False)
    server.start(log_file=tmp_path / "pg.log")
    yield server
    server.stop()


async def test_a_database_outage_after_the_sends_is_waited_out_and_nothing_is_sent_twice(
    own_postgres: LocalPostgres,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    """PostgreSQL stops while the provider holds the send, so the ledger write meets no
    database. The dispatcher keeps the batch, retries the write until PostgreSQL is back,
    records the send once and goes on: no restart, no second send."""
    url = own_postgres.url()
    db = await prepare_database(url)
    await webhook_channel(db, sink)
    await db.close()
    sink.hold = asyncio.Event()
    dispatcher = start_dispatcher(CAIRN_DATABASE_URL=url)
    await dispatcher.wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(js, topology, delivery("p-1", channel="webhook"))
    await sink.arrived.wait()
    own_postgres.stop()
    sink.hold.set()
    await asyncio.sleep(2)  # the ledger write fails meanwhile
    own_postgres.start(log_file=own_postgres.data_dir.parent / "pg-again.log")

    await results.wait("p-1", "sent", timeout=60)
    db = await asyncpg.connect(url)
    try:
        row = await ledger(db, "p-1")
        assert row is not None
        assert row["status"] == "sent"
    finally:
        await db.close()
    await send_requests(js, topology, delivery("p-2", channel="webhook"))
    await results.wait("p-2", "sent")
    assert webhook_ids(sink) == ["p-1", "p-2"]
    assert alive(dispatcher)


@pytest.fixture
async def own_nats(tmp_path: Path) -> AsyncIterator[LocalNats]:
    """A NATS server of this test alone, so it can be restarted (on the same port and store)."""
    server = LocalNats(tmp_path / "nats")
    server.start(log_file=tmp_path / "nats.log")
    yield server
    server.stop()


async def test_a_nats_restart_under_the_dispatcher_pauses_it_and_it_goes_on(
    db: asyncpg.Connection,
    sink: HttpSink,
    own_nats: LocalNats,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    await webhook_channel(db, sink)
    dispatcher = start_dispatcher(CAIRN_NATS_URL=own_nats.url)
    await dispatcher.wait_ready()
    before = await nats.connect(own_nats.url)
    try:
        results = await Results.listen(before, topology)
        await send_requests(before.jetstream(), topology, delivery("n-1", channel="webhook"))
        await results.wait("n-1", "sent")
    finally:
        await before.close()

    own_nats.stop()
    await asyncio.sleep(2)  # the dispatcher's fetches fail while NATS is away
    own_nats.start(log_file=own_nats.data_dir.parent / "nats-again.log")

    after = await nats.connect(own_nats.url)
    try:
        results = await Results.listen(after, topology)
        await send_requests(after.jetstream(), topology, delivery("n-2", channel="webhook"))
        await results.wait("n-2", "sent", timeout=60)
    finally:
        await after.close()
    assert webhook_ids(sink) == ["n-1", "n-2"]
    assert alive(dispatcher)


async def test_a_redriven_dead_letter_is_sent_after_the_fix(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    """A send to a channel that does not exist yet is dead-lettered; once the channel is created,
    re-driving the dead letter sends it (a dead-lettered delivery is not a replay); re-driving
    again sends nothing more."""
    dispatcher = start_dispatcher()
    await dispatcher.wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(js, topology, delivery("r-1", channel="webhook"))
    await results.wait("r-1", "dead_lettered")
    [letter] = await dead_letters(js, topology, topology.deliveries_stream)
    assert "webhook" in letter.reason

    await webhook_channel(db, sink)
    info = await js.stream_info(topology.dead_letter_stream)
    await redrive(js, topology, info.state.last_seq)
    await results.wait("r-1", "sent")
    assert webhook_ids(sink) == ["r-1"]
    row = await ledger(db, "r-1")
    assert row is not None
    assert row["status"] == "sent"

    # The same delivery published again (not a re-drive) is a replay: nothing is sent.
    again = delivery("r-1", channel="webhook")
    await publish(js, topology.delivery_subject("webhook"), again, msg_id="r-1-again")
    await asyncio.sleep(2)
    assert webhook_ids(sink) == ["r-1"]
