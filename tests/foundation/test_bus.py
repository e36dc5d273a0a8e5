"""The bus against a real nats-server: provisioning, dedupe, the consume loop's three endings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from nats.js import api
from nats.js.client import JetStreamContext

from cairn_common.bus import provision, provision_topology, publish
from cairn_common.consume import (
    ACK,
    Incoming,
    Outcome,
    PullConsumer,
    Reject,
    Retry,
    one_at_a_time,
)
from cairn_common.messages import DeadLetter, Event, decode
from cairn_common.topology import GIVE_UPS_MAX_BYTES, ConsumerSpec, Topology


def make_event(n: int, partition: int = 0) -> Event:
    now = datetime.now(UTC)
    return Event(
        message_id=f"m-{n}",
        type="track",
        event="Cart Abandoned",
        profile_id=f"user-{n}",
        user_id=f"user-{n}",
        partition=partition,
        received_at=now,
        timestamp=now,
        properties={"n": n},
    )


def fast_consumer(topology: Topology, *, max_deliver: int = 3) -> ConsumerSpec:
    """A consumer like the matcher's but with a short backoff ladder, so retries show quickly."""
    return ConsumerSpec(
        stream=topology.inputs_stream,
        durable="test-consumer",
        filter_subject=None,
        max_deliver=max_deliver,
        ack_wait=timedelta(seconds=5),
        backoff=(timedelta(milliseconds=100), timedelta(milliseconds=200)),
    )


async def dead_letters(js: JetStreamContext, topology: Topology) -> list[DeadLetter]:
    info = await js.stream_info(topology.dead_letter_stream)
    letters = []
    for seq in range(1, info.state.messages + 1):
        raw = await js.get_msg(topology.dead_letter_stream, seq)
        letter = decode(raw.data or b"")
        assert isinstance(letter, DeadLetter)
        letters.append(letter)
    return letters


@pytest.fixture
async def provisioned(js: JetStreamContext, topology: Topology) -> AsyncIterator[Topology]:
    await provision_topology(js, topology)
    yield topology
    for spec in topology.streams():
        await js.delete_stream(spec.name)


class Running:
    """A PullConsumer running in the background of a test, stopped on exit."""

    def __init__(self, consumer: PullConsumer) -> None:
        self.consumer = consumer
        self.stop = asyncio.Event()

    async def __aenter__(self) -> Running:
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self._tg.create_task(self.consumer.run(self.stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await self._tg.__aexit__(None, None, None)


async def test_provisioning_twice_and_concurrently_leaves_one_identical_topology(
    js: JetStreamContext, topology: Topology
) -> None:
    await asyncio.gather(*(provision_topology(js, topology) for _ in range(4)))
    await provision_topology(js, topology)
    for spec in topology.streams():
        info = await js.stream_info(spec.name)
        assert info.config.subjects == list(spec.subjects)
        assert info.config.duplicate_window == spec.duplicate_window.total_seconds()
    for cspec in topology.consumers():
        cinfo = await js.consumer_info(cspec.stream, cspec.durable)
        assert cinfo.config.max_deliver == cspec.max_deliver
    names = {s.name for s in topology.streams()}
    assert names == {
        topology.inputs_stream,
        topology.deliveries_stream,
        topology.dead_letter_stream,
        topology.give_ups_stream,
    }
    for spec in topology.streams():
        await js.delete_stream(spec.name)


async def test_streams_are_bounded_and_only_dead_letters_make_room_by_dropping(
    js: JetStreamContext, topology: Topology
) -> None:
    """Inputs and deliveries refuse new messages when full (nothing accepted is dropped) and have
    no age limit; the dead letters keep the newest, for 30 days. A deployment made before the
    bounds existed gets them on its next start."""
    old = api.StreamConfig(
        name=topology.inputs_stream, subjects=[f"{topology.namespace}.inputs.>"],
        max_age=7 * 86400.0, discard=api.DiscardPolicy.OLD,
    )  # fmt: skip
    await js.add_stream(old)
    await provision_topology(js, topology)
    configs = {s.name: (await js.stream_info(s.name)).config for s in topology.streams()}
    bounds = {
        topology.inputs_stream: (topology.inputs_max_bytes, api.DiscardPolicy.NEW, 0),
        topology.deliveries_stream: (topology.deliveries_max_bytes, api.DiscardPolicy.NEW, 0),
        topology.dead_letter_stream: (
            topology.dead_letters_max_bytes, api.DiscardPolicy.OLD, 30 * 86400.0,
        ),
        topology.give_ups_stream: (GIVE_UPS_MAX_BYTES, api.DiscardPolicy.OLD, 7 * 86400.0),
    }  # fmt: skip
    assert {n: (c.max_bytes, c.discard, c.max_age) for n, c in configs.items()} == bounds
    for name in configs:
        await js.delete_stream(name)


async def test_publish_with_the_same_msg_id_is_stored_once(
    js: JetStreamContext, provisioned: Topology
) -> None:
    subject = provisioned.input_subject(3, "event")
    first = await publish(js, subject, make_event(1), msg_id="m-1")
    again = await publish(js, subject, make_event(1), msg_id="m-1")
    other = await publish(js, subject, make_event(2), msg_id="m-2")
    assert not first.duplicate
    assert again.duplicate
    assert again.seq == first.seq
    assert not other.duplicate
    info = await js.stream_info(provisioned.inputs_stream)
    assert info.state.messages == 2


async def test_handled_messages_are_acked_once_in_order(
    js: JetStreamContext, provisioned: Topology
) -> None:
    seen: list[int] = []
    done = asyncio.Event()

    async def handle(item: Incoming) -> Outcome:
        assert isinstance(item.message, Event)
        seen.append(item.message.properties["n"])
        if len(seen) == 20:
            done.set()
        return ACK

    for n in range(20):
        await publish(js, provisioned.input_subject(0, "event"), make_event(n), msg_id=f"m-{n}")
    spec = fast_consumer(provisioned)
    await provision(js, [], [spec])
    consumer = PullConsumer(js, provisioned, spec, one_at_a_time(handle, "test"), batch=7)
    async with Running(consumer):
        await asyncio.wait_for(done.wait(), 10)
        await asyncio.wait_for(consumer.idle.wait(), 5)
    assert seen == list(range(20))
    # Acks are fire-and-forget publishes that the server applies asynchronously; wait for them.
    async with asyncio.timeout(10):
        while (info := await js.consumer_info(spec.stream, spec.durable)).num_ack_pending:
            await asyncio.sleep(0.05)
    assert info.num_pending == 0
    assert info.num_redelivered == 0


async def test_retry_naks_and_the_message_comes_back(
    js: JetStreamContext, provisioned: Topology
) -> None:
    deliveries: list[int] = []
    done = asyncio.Event()

    async def handle(item: Incoming) -> Outcome:
        deliveries.append(item.deliveries)
        if item.deliveries < 2:
            return Retry("provider busy")
        done.set()
        return ACK

    await publish(js, provisioned.input_subject(0, "event"), make_event(1), msg_id="m-1")
    spec = fast_consumer(provisioned)
    await provision(js, [], [spec])
    consumer = PullConsumer(js, provisioned, spec, one_at_a_time(handle, "test"))
    assert consumer.backoff(1) == pytest.approx(0.1)
    assert consumer.backoff(9) == pytest.approx(0.2)
    async with Running(consumer):
        await asyncio.wait_for(done.wait(), 10)
    assert deliveries == [1, 2]
    assert (await js.stream_info(provisioned.dead_letter_stream)).state.messages == 0


async def test_reject_dead_letters_with_reason_and_does_not_block_the_partition(
    js: JetStreamContext, provisioned: Topology
) -> None:
    handled: list[int] = []
    done = asyncio.Event()

    async def handle(item: Incoming) -> Outcome:
        assert isinstance(item.message, Event)
        n = item.message.properties["n"]
        if n == 1:
            return Reject("template cart-reminder-email is not ready")
        handled.append(n)
        if n == 3:
            done.set()
        return ACK

    subject = provisioned.input_subject(0, "event")
    for n in range(4):
        await publish(js, subject, make_event(n), msg_id=f"m-{n}")
    spec = fast_consumer(provisioned)
    await provision(js, [], [spec])
    async with Running(PullConsumer(js, provisioned, spec, one_at_a_time(handle, "test"))):
        await asyncio.wait_for(done.wait(), 10)
    assert handled == [0, 2, 3]
    [letter] = await dead_letters(js, provisioned)
    assert letter.reason == "template cart-reminder-email is not ready"
    assert letter.subject == subject
    assert letter.consumer == "test-consumer"
    original = decode(letter.data)
    assert isinstance(original, Event)
    assert original.properties == {"n": 1}


async def test_undecodable_message_is_dead_lettered_without_reaching_the_handler(
    js: JetStreamContext, provisioned: Topology
) -> None:
    handled: list[str] = []
    done = asyncio.Event()

    async def handle_batch(batch: Sequence[Incoming]) -> list[Outcome]:
        handled.extend(item.subject for item in batch)
        done.set()
        return [ACK for _ in batch]

    subject = provisioned.input_subject(0, "event")
    await js.publish(subject, b'{"msg_type": "event", "message_id": 7}')
    await js.publish(subject, b"not json at all")
    await publish(js, subject, make_event(5), msg_id="m-5")
    spec = fast_consumer(provisioned)
    await provision(js, [], [spec])
    async with Running(PullConsumer(js, provisioned, spec, handle_batch)):
        await asyncio.wait_for(done.wait(), 10)
    assert handled == [subject]
    letters = await dead_letters(js, provisioned)
    assert len(letters) == 2
    assert all(letter.reason.startswith("undecodable message:") for letter in letters)
    assert "message_id" in letters[0].reason
    assert letters[1].data == b"not json at all"


async def test_a_handler_that_keeps_failing_is_dead_lettered_after_max_deliver(
    js: JetStreamContext, provisioned: Topology
) -> None:
    attempts: list[int] = []

    async def handle(item: Incoming) -> Outcome:
        attempts.append(item.deliveries)
        raise RuntimeError("bug in handler")

    await publish(js, provisioned.input_subject(0, "event"), make_event(1), msg_id="m-1")
    spec = fast_consumer(provisioned, max_deliver=3)
    await provision(js, [], [spec])
    async with Running(PullConsumer(js, provisioned, spec, one_at_a_time(handle, "test"))):
        async with asyncio.timeout(10):
            while (await js.stream_info(provisioned.dead_letter_stream)).state.messages == 0:
                await asyncio.sleep(0.05)
    assert attempts == [1, 2, 3]
    [letter] = await dead_letters(js, provisioned)
    assert letter.reason == "gave up after 3 deliveries: RuntimeError: bug in handler"
    assert letter.deliveries == 3


def test_wire_messages_round_trip_and_tolerate_unknown_fields() -> None:
    event = make_event(1)
    assert decode(msgspec.json.encode(event)) == event
    newer = msgspec.json.decode(msgspec.json.encode(event))
    newer["field_from_a_newer_version"] = {"x": 1}
    assert decode(msgspec.json.encode(newer)) == event
