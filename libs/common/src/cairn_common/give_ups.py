"""What JetStream stopped delivering unsettled ends in the dead letters, never silently.

A consume loop dead-letters a message whose handling failed on its last delivery (the explicit
last-attempt check in ``cairn_common.consume``). That check cannot run when the process dies or
is killed on that delivery (an out-of-memory kill, a crash in a provider library, ``kill -9``):
JetStream then waits out the ack wait, does not redeliver, and publishes a max-deliveries
advisory. The give-ups stream keeps those advisories (``Topology.give_ups_stream``), so one
arriving while no replica runs is handled when one starts; ``GiveUps`` reads them with a shared
durable consumer, takes the message from its stream by sequence, dead-letters it with the reason
and deletes it from the stream. The dead letter's ``Nats-Msg-Id`` is the one the consume loop
would have used, so a message both paths saw is dead-lettered once; a message settled meanwhile
(acknowledged, terminated) is gone from its stream and nothing happens.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import Counter

from cairn_common.bus import publish
from cairn_common.consume import fetch_unless_stopped
from cairn_common.failures import Backoff, describe, is_transient
from cairn_common.messages import DeadLetter
from cairn_common.topology import Topology
from cairn_common.waiting import wait_any

log = structlog.get_logger(__name__)

GIVEN_UP = Counter(
    "cairn_consumer_given_up_total",
    "Messages JetStream stopped delivering unsettled, dead-lettered from its advisory",
    ["stream", "consumer"],
)


class MaxDeliveries(msgspec.Struct):
    """``io.nats.jetstream.advisory.v1.max_deliver`` (the fields Cairn reads)."""

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int


_advisory = msgspec.json.Decoder(MaxDeliveries)


class GiveUps:
    def __init__(self, js: JetStreamContext, topology: Topology, *, batch: int = 64) -> None:
        self._js = js
        self._topology = topology
        self._batch = batch

    async def run(self, stop: asyncio.Event, fetch_timeout: float = 1.0) -> None:
        """Handle advisories until ``stop``; a transient failure pauses with backoff (the
        advisory is redelivered), anything else is a bug and propagates."""
        sub = await self._js.pull_subscribe_bind(
            durable=self._topology.give_ups_consumer, stream=self._topology.give_ups_stream
        )
        backoff = Backoff()
        try:
            while not stop.is_set():
                try:
                    for msg in await fetch_unless_stopped(sub, self._batch, fetch_timeout, stop):
                        await self.handle(msg)
                    backoff.reset()
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    delay = backoff.next()
                    log.warning("give-ups paused", error=describe(exc), retry_in=delay)
                    await wait_any(stop, timeout=delay)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def handle(self, msg: Msg) -> None:
        try:
            notice = _advisory.decode(msg.data)
        except msgspec.DecodeError as exc:
            log.error("unreadable max-deliveries advisory", error=str(exc))
            await msg.term()
            return
        try:
            stored = await self._js.get_msg(notice.stream, notice.stream_seq)
        except NotFoundError:
            await msg.ack()  # settled (or dead-lettered and deleted) meanwhile
            return
        reason = (
            f"JetStream stopped delivering it after {notice.deliveries} deliveries without an"
            f" acknowledgement from {notice.consumer!r}: the consumer died, was killed or hung"
            " on its last delivery"
        )
        letter = DeadLetter(
            stream=notice.stream,
            consumer=notice.consumer,
            subject=stored.subject or "",
            reason=reason,
            deliveries=notice.deliveries,
            at=datetime.now(UTC),
            data=stored.data or b"",
            headers={k: str(v) for k, v in (stored.headers or {}).items()},
            stream_seq=notice.stream_seq,
        )
        await publish(
            self._js,
            self._topology.dead_letter_subject(notice.stream),
            letter,
            msg_id=f"dlq:{notice.stream}:{notice.consumer}:{notice.stream_seq}",
        )
        # Settled between our read and our delete: the dead letter still says what it was.
        with contextlib.suppress(NotFoundError):
            await self._js.delete_msg(notice.stream, notice.stream_seq)
        GIVEN_UP.labels(notice.stream, notice.consumer).inc()
        log.error("message dead-lettered after JetStream gave up on it", stream=notice.stream,
                  consumer=notice.consumer, seq=notice.stream_seq)  # fmt: skip
        await msg.ack()
