"""SIGKILL between the provider call and the ledger write: at most one duplicate, same key."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from cairn_common.bus import provision_topology
from cairn_common.give_ups import GiveUps
from cairn_common.messages import DeadLetter, DeliveryRequested, decode
from cairn_common.topology import Topology
from tests.dispatcher.support import (
    LOOPBACK,
    HttpSink,
    Results,
    apply,
    delivery,
    eventually,
    ledger,
    send_requests,
)
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("restarted", ["same replica", "another replica"])
async def test_sigkill_after_the_provider_call_resends_once_with_the_same_idempotency_key(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
    restarted: str,
) -> None:
    """The dispatcher dies holding a provider call. Restarted under its own name (as ``cairn
    up`` and a StatefulSet do) it takes its claim back on the redelivery; another replica
    waits until the dead one's claim lapses (``CAIRN_CLAIM_SECONDS``). Either way the request
    is sent once more, with the same key, and recorded once."""
    await apply(
        db,
        "Channel",
        "webhook",
        {"provider": "webhook", "options": {"allow_networks": LOOPBACK, "url": f"{sink.url}/hook"}},
    )
    sink.hold = asyncio.Event()  # the provider has the request but has not answered yet
    # A claim outliving the ack wait, so another replica surely meets it before it lapses.
    first = start_dispatcher(CAIRN_REPLICA_ID="one", CAIRN_CLAIM_SECONDS="8")
    await first.wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(js, topology, delivery("k-1", channel="webhook"))
    await sink.arrived.wait()
    first.kill()
    assert await first.wait_exit() != 0
    row = await ledger(db, "k-1")  # it died before writing the outcome: only its claim
    assert row is not None
    assert row["status"] == "sending"
    sink.hold.set()

    second = start_dispatcher(CAIRN_REPLICA_ID="one" if restarted == "same replica" else "two")
    await second.wait_ready()
    # After the 3 s ack wait runs out; the bound fails with the minute-long wait of before.
    sent = await results.wait("k-1", "sent", timeout=30)
    if restarted == "same replica":
        assert sent.attempts == 2
        assert "is sending it" not in second.output()
    else:
        assert "replica one is sending it" in second.output()
    assert [r.headers["webhook-id"] for r in sink.requests] == ["k-1", "k-1"]
    # Once recorded, later redeliveries send nothing more.
    await send_requests(js, topology, delivery("k-2", channel="webhook"))
    await results.wait("k-2", "sent")
    assert [r.headers["webhook-id"] for r in sink.requests] == ["k-1", "k-1", "k-2"]


async def test_a_copy_redelivered_while_its_send_is_under_way_waits_for_it_and_is_not_resent(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    """The first dispatcher's in-progress acks never reach JetStream (as when they are lost in
    a NATS leader election), so the 3 s ack wait runs out while its provider call is still open
    and the request is redelivered to a second dispatcher. The copy meets the first's claim in
    the ledger and waits; once the first records the send, the copy replays its outcome. The
    provider is called once."""
    await apply(
        db,
        "Channel",
        "webhook",
        {"provider": "webhook", "options": {"allow_networks": LOOPBACK, "url": f"{sink.url}/hook"}},
    )
    sink.hold = asyncio.Event()
    first = start_dispatcher(CAIRN_PROGRESS_INTERVAL_SECONDS="60", CAIRN_REPLICA_ID="first")
    await first.wait_ready()
    results = await Results.listen(nc, topology)
    await send_requests(js, topology, delivery("k-1", channel="webhook"))
    await sink.arrived.wait()
    second = start_dispatcher(CAIRN_REPLICA_ID="second")
    await second.wait_ready()

    await eventually(lambda: "replica first is sending it" in second.output(), timeout=20)
    assert len(sink.requests) == 1
    sink.hold.set()
    await results.wait("k-1", "sent")
    await asyncio.sleep(4)  # past another ack wait and the copy's retry
    assert [r.headers["webhook-id"] for r in sink.requests] == ["k-1"]
    row = await ledger(db, "k-1")
    assert row is not None
    assert (row["status"], row["claimed_by"]) == ("sent", None)


async def test_a_delivery_whose_dispatcher_dies_on_its_last_attempt_is_dead_lettered_not_lost(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    """The explicit last-attempt check cannot run in a process killed on that attempt. JetStream
    then stops delivering and says so in an advisory; the give-ups stream keeps it until
    ``GiveUps`` (run by every dispatcher) dead-letters the message with the reason and removes
    it from the work queue, and the next delivery is sent as usual."""
    await apply(
        db,
        "Channel",
        "webhook",
        {"provider": "webhook", "options": {"allow_networks": LOOPBACK, "url": f"{sink.url}/hook"}},
    )
    await provision_topology(js, topology)
    stream, durable = topology.deliveries_stream, topology.dispatcher_consumer
    config = (await js.consumer_info(stream, durable)).config
    config.ack_wait, config.max_deliver = 0.5, 2  # a short life, to be killed twice quickly
    await js.add_consumer(stream, config)
    await send_requests(js, topology, delivery("k-dead", channel="webhook"))

    doomed = await js.pull_subscribe_bind(durable=durable, stream=stream)
    for attempt in (1, 2):  # a dispatcher that takes it and dies before settling, twice
        [msg] = await doomed.fetch(1, timeout=5)
        assert msg.metadata.num_delivered == attempt
        seq = msg.metadata.sequence.stream
    with pytest.raises(TimeoutError):  # the next pull: JetStream gives up instead
        await doomed.fetch(1, timeout=1.5)
    await doomed.unsubscribe()
    async with asyncio.timeout(15):  # its advisory, kept while nothing handles it
        while (await js.stream_info(topology.give_ups_stream)).state.messages < 1:
            await asyncio.sleep(0.1)

    stop = asyncio.Event()
    give_ups = asyncio.create_task(GiveUps(js, topology).run(stop, fetch_timeout=0.2))
    dlq = topology.dead_letter_subject(stream)
    async with asyncio.timeout(20):
        while True:
            try:
                stored = await js.get_last_msg(topology.dead_letter_stream, dlq)
                break
            except NotFoundError:
                await asyncio.sleep(0.1)
    stop.set()
    await give_ups
    letter = decode(stored.data)
    assert isinstance(letter, DeadLetter)
    assert "stopped delivering it after 2 deliveries" in letter.reason
    assert letter.stream_seq == seq
    request = decode(letter.data)
    assert isinstance(request, DeliveryRequested)
    assert request.delivery_id == "k-dead"
    with pytest.raises(NotFoundError):
        await js.get_msg(stream, seq)  # no longer waiting in the work queue
    async with asyncio.timeout(10):
        while (await js.stream_info(topology.give_ups_stream)).state.messages:
            await asyncio.sleep(0.1)

    results = await Results.listen(nc, topology)
    dispatcher = start_dispatcher()  # its consume loop runs GiveUps too (cairn_common.runtime)
    await dispatcher.wait_ready()
    await send_requests(js, topology, delivery("k-next", channel="webhook"))
    await results.wait("k-next", "sent")
    assert [r.headers["webhook-id"] for r in sink.requests] == ["k-next"]
