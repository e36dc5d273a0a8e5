"""The outbox never blocks behind one row: a message that can never be published is dead-lettered
with its reason, its delivery is reported failed, and the rows behind it are published.

Rows are written with the matcher's own SQL (``repo.write_batch``) into a real PostgreSQL and
published to a real NATS, by the relay (what a crash leaves behind) and by the worker's fast path
(right after the commit).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import asyncpg
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError
from nats.js.api import StreamConfig
from nats.js.client import JetStreamContext

from cairn_common.failures import Failure, classify
from cairn_common.messages import DeadLetter, DeliveryRequested, DeliveryResult, decode, encode
from cairn_common.partitioning import partition_for
from cairn_common.topology import Topology
from cairn_matcher import repo
from cairn_matcher.outbox import Outbox, OutboxMessage, payload_bound
from tests.conftest import Servers
from tests.support.engine import (
    CART_EMAIL,
    Deliveries,
    Inputs,
    prepared,
    publish_journey,
    wait_for_rows,
)
from tests.support.processes import ServiceProcess

P = 4


def request(profile_id: str, *, padding: int = 0) -> DeliveryRequested:
    """A delivery request whose profile carries ``padding`` bytes of traits (traits only grow)."""
    return DeliveryRequested(
        delivery_id=f"d-{uuid.uuid4().hex[:8]}", profile_id=profile_id, journey="cart",
        version=1, instance_id=f"i-{profile_id}", step_id="email", visit=1,
        requested_at=datetime.now(UTC), channel="email", template="t", to="profile.email",
        address=f"{profile_id}@example.com", profile={"notes": "x" * padding},
    )  # fmt: skip


@pytest.fixture
async def pool(
    database_url: str, js: JetStreamContext, topology: Topology
) -> AsyncIterator[asyncpg.Pool]:
    pool = await prepared(database_url, js, topology)
    yield pool
    await pool.close()


async def stored(
    pool: asyncpg.Pool, topology: Topology, *requests: DeliveryRequested
) -> list[OutboxMessage]:
    """Committed to the outbox in this order, as the matcher's commit writes them."""
    rows = [(topology.delivery_subject("email"), r.delivery_id, encode(r), None) for r in requests]
    async with pool.acquire() as conn, conn.transaction():
        written = await repo.write_batch(conn, repo.BatchRows(outbox=rows))
        return [OutboxMessage(*row) for row in written]


async def assert_refused_and_reported(
    js: JetStreamContext, topology: Topology, refused: DeliveryRequested, reason_has: str
) -> None:
    """The refused request is in the dead letters with its reason, and a failed result for it
    entered its profile's partition as the dispatcher would report one."""
    dlq = await js.get_last_msg(
        topology.dead_letter_stream, topology.dead_letter_subject(topology.deliveries_stream)
    )
    letter = decode(dlq.data)
    assert isinstance(letter, DeadLetter)
    assert letter.subject == topology.delivery_subject("email")
    assert letter.headers["Nats-Msg-Id"] == refused.delivery_id
    assert reason_has in letter.reason

    partition = partition_for(refused.profile_id, P)
    raw = await js.get_last_msg(topology.inputs_stream, topology.input_subject(partition, "result"))
    result = decode(raw.data)
    assert isinstance(result, DeliveryResult)
    assert (result.delivery_id, result.outcome, result.step_id) == (
        refused.delivery_id, "failed", "email"
    )  # fmt: skip
    assert result.reason == letter.reason


async def assert_only_published(
    js: JetStreamContext, topology: Topology, *published: DeliveryRequested
) -> None:
    deliveries = await Deliveries(js, topology, P, report=False).start()  # results: the relay's
    await deliveries.until(len(published), timeout=20)
    seen = await deliveries.settle(quiet=0.5)
    assert [d.delivery_id for d in seen] == [r.delivery_id for r in published]


async def test_the_relay_dead_letters_an_oversized_request_and_publishes_the_row_behind_it(
    pool: asyncpg.Pool, nc: NATS, js: JetStreamContext, topology: Topology
) -> None:
    outbox = Outbox(js, pool, relay_after=0.0, topology=topology, partitions=P,
                    max_bytes=payload_bound(nc.max_payload))  # fmt: skip
    huge = request("ann", padding=nc.max_payload + 1)  # above what NATS itself accepts
    good = request("bob")
    await stored(pool, topology, huge, good)

    assert await outbox.relay_once() == 2

    await assert_only_published(js, topology, good)
    await assert_refused_and_reported(js, topology, huge, "larger than the outbox bound")
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_the_fast_path_checks_the_bound_before_publishing(
    pool: asyncpg.Pool, nc: NATS, js: JetStreamContext, topology: Topology
) -> None:
    outbox = Outbox(js, pool, relay_after=60.0, topology=topology, partitions=P,
                    max_bytes=payload_bound(nc.max_payload))  # fmt: skip
    # Below the server's max_payload (NATS would take it) but above the bound: refused first.
    big = request("cy", padding=nc.max_payload - 2048)
    assert payload_bound(nc.max_payload) < len(encode(big)) < nc.max_payload
    good = request("dee")
    messages = await stored(pool, topology, big, good)

    await outbox.publish(messages)
    await outbox.flush_deletes()

    await assert_only_published(js, topology, good)
    await assert_refused_and_reported(js, topology, big, "larger than the outbox bound")
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_a_request_jetstream_refuses_for_good_is_found_and_the_others_published(
    pool: asyncpg.Pool, nc: NATS, js: JetStreamContext, topology: Topology
) -> None:
    """A permanent refusal from JetStream (here the stream's own message size limit, below the
    outbox bound) fails the batch; the outbox finds the one message and settles each."""
    info = await js.stream_info(topology.deliveries_stream)
    config: StreamConfig = info.config
    config.max_msg_size = 16 * 1024
    await js.update_stream(config)
    outbox = Outbox(js, pool, relay_after=0.0, topology=topology, partitions=P,
                    max_bytes=payload_bound(nc.max_payload))  # fmt: skip
    first, refused, last = request("eve"), request("fay", padding=32 * 1024), request("gus")
    await stored(pool, topology, first, refused, last)

    assert await outbox.relay_once() == 3

    await assert_only_published(js, topology, first, last)
    await assert_refused_and_reported(js, topology, refused, "err_code=10054")
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_a_transient_failure_leaves_every_row_for_a_later_attempt(
    pool: asyncpg.Pool, servers: Servers, nc: NATS, js: JetStreamContext, topology: Topology
) -> None:
    """NATS unreachable (a connection that has closed): nothing is dead-lettered or deleted, the
    relay reports the failure (it backs off), and publishes everything once NATS is back."""
    gone = await nats.connect(servers.nats_url)
    await gone.close()
    bound = payload_bound(nc.max_payload)
    down = Outbox(gone.jetstream(), pool, relay_after=0.0, topology=topology, partitions=P,
                  max_bytes=bound)  # fmt: skip
    first, second = request("hal"), request("ida")
    messages = await stored(pool, topology, first, second)

    await down.publish(messages)
    with pytest.raises(ConnectionClosedError) as raised:
        await down.relay_once()
    assert classify(raised.value) is Failure.TRANSIENT, "so the relay backs off and retries"
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 2

    up = Outbox(js, pool, relay_after=0.0, topology=topology, partitions=P, max_bytes=bound)
    assert await up.relay_once() == 2
    await assert_only_published(js, topology, first, second)
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_a_profile_grown_past_the_bound_fails_its_send_and_the_neighbours_get_theirs(
    spawn: Callable[..., ServiceProcess],
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    """The case as a user meets it, through a real matcher: identify calls grow one profile's
    traits past what one message can carry; its delivery request is dead-lettered on the fast
    path, the send counts as failed in the journey's analytics and the journey goes on; the
    other profile's request is published."""
    pool = await prepared(database_url, js, topology)
    await publish_journey(pool, CART_EMAIL)
    inputs = Inputs(js, topology, P)
    chunk = 32 * 1024
    for n in range(nc.max_payload // chunk + 2):
        await inputs.identify("ann", **{f"note{n}": "x" * chunk}, email="ann@example.com")
    await inputs.identify("bob", email="bob@example.com")
    # A budget above what one message carries: what the outbox does when a profile still grows
    # past it (the budget's own refusal is tests/matcher/test_poison.py's).
    matcher = spawn("cairn_matcher", CAIRN_PARTITIONS=str(P),
                    CAIRN_MAX_PROFILE_TRAITS_BYTES=str(4 * nc.max_payload))  # fmt: skip
    await matcher.wait_ready()
    await wait_for_rows(pool, "SELECT count(*) FROM profiles", expect=2)

    await inputs.send("ann", "Cart Abandoned")
    await inputs.send("bob", "Cart Abandoned")

    await wait_for_rows(
        pool,
        "SELECT coalesce(sum(n), 0) FROM journey_stats WHERE counter = 'delivery:failed'",
        expect=1,
    )
    await wait_for_rows(
        pool,
        "SELECT count(*) FROM journey_instances ji JOIN timers t USING (instance_id) "
        "WHERE ji.profile_id = 'ann' AND t.step_id = 'after'",
        expect=1,
    )  # the failed send finished its step: ann's journey went on to the wait
    deliveries = await Deliveries(js, topology, P).start()
    await deliveries.until(1, timeout=20)
    assert [d.profile_id for d in await deliveries.settle(quiet=0.5)] == ["bob"]
    dlq = await js.get_last_msg(
        topology.dead_letter_stream, topology.dead_letter_subject(topology.deliveries_stream)
    )
    letter = decode(dlq.data)
    assert isinstance(letter, DeadLetter)
    assert "larger than the outbox bound" in letter.reason
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    await pool.close()
