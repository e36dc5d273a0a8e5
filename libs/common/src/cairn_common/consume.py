"""A pull-consume loop: fetch a batch, hand it over, settle each message, fetch the next.

The next batch is fetched only when the last is settled, so backpressure comes for free. Each
message ends one of three ways, decided by the handler:

- ``Ack``: done; acknowledged only after the handler returned (i.e. after its commit).
- ``Retry``: a transient failure; ``nak`` with a delay from the consumer's backoff ladder. When the
  message has been delivered ``max_deliver`` times it is dead-lettered instead.
- ``Reject``: it can never succeed (poison); published to the dead-letter stream with the reason
  and then ``term``-ed, so it never blocks its partition.

A message that does not decode as a Cairn wire message is rejected without reaching the handler.
An unexpected exception from a per-message handler is treated as ``Retry`` (logged with its stack),
so a bug costs a few redeliveries and then a dead letter, never a stuck stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from cairn_common.bus import publish
from cairn_common.failures import Backoff, describe, is_transient
from cairn_common.messages import DeadLetter, Message, decode
from cairn_common.observability import (
    DEAD_LETTERS,
    HANDLE_SECONDS,
    MESSAGES_HANDLED,
    consumer_span,
)
from cairn_common.topology import ConsumerSpec, Topology

log = structlog.get_logger(__name__)


class Ack(msgspec.Struct, frozen=True):
    pass


class Retry(msgspec.Struct, frozen=True):
    reason: str
    delay: float | None = None
    """Seconds; ``None`` takes the consumer's backoff for this delivery count."""


class Reject(msgspec.Struct, frozen=True):
    reason: str


Outcome = Ack | Retry | Reject
ACK = Ack()


class Incoming(msgspec.Struct):
    """One fetched message, decoded."""

    msg: Msg
    message: Message
    deliveries: int

    @property
    def headers(self) -> dict[str, str]:
        return dict(self.msg.headers or {})

    @property
    def subject(self) -> str:
        return self.msg.subject


BatchHandler = Callable[[Sequence[Incoming]], Awaitable[Sequence[Outcome]]]
MessageHandler = Callable[[Incoming], Awaitable[Outcome]]


def one_at_a_time(handler: MessageHandler, consumer: str) -> BatchHandler:
    """Adapt a per-message handler: messages in fetch order, each in its own consumer span."""

    async def handle_batch(batch: Sequence[Incoming]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for item in batch:
            attributes = {
                "messaging.system": "nats",
                "messaging.destination.name": item.subject,
                "messaging.operation.type": "process",
                "messaging.consumer.group.name": consumer,
            }
            with consumer_span(f"process {item.subject}", item.headers, attributes):
                try:
                    outcomes.append(await handler(item))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.exception("handler failed", subject=item.subject)
                    outcomes.append(Retry(reason=f"{type(exc).__name__}: {exc}"))
        return outcomes

    return handle_batch


async def fetch_available(
    sub: JetStreamContext.PullSubscription, batch: int, timeout: float
) -> list[Msg]:
    """Wait up to ``timeout`` for the first message, then take whatever else is there at once, up
    to ``batch``. nats-py's ``fetch(n)`` on a caught-up consumer waits for ``n`` messages or the
    whole timeout, which would hold a lone message for up to that long; this does not."""
    msgs: list[Msg] = await sub.fetch(1, timeout=timeout)
    if batch > 1:
        with contextlib.suppress(TimeoutError):
            msgs += await sub.fetch(batch - 1, timeout=0.005)
    return msgs


async def fetch_unless_stopped(
    sub: JetStreamContext.PullSubscription, batch: int, timeout: float, *stops: asyncio.Event
) -> list[Msg]:
    """``fetch_available``, abandoned as soon as one of ``stops`` is set. ``[]`` when stopped or
    when nothing arrived within ``timeout``; any other fetch error propagates."""
    fetch = asyncio.ensure_future(fetch_available(sub, batch, timeout))
    stopped = [asyncio.ensure_future(stop.wait()) for stop in stops]
    try:
        await asyncio.wait({fetch, *stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in stopped:
            waiter.cancel()
    if not fetch.done():
        # Stopping: abandon the pending pull. Nothing was handed to us yet, so nothing is lost;
        # any message the server sent in the meantime is redelivered after ack_wait.
        fetch.cancel()
        await asyncio.gather(fetch, return_exceptions=True)
        return []
    try:
        return fetch.result()
    except TimeoutError:
        return []


class PullConsumer:
    """Runs one durable pull consumer until ``stop`` is set; in-flight work always finishes."""

    def __init__(
        self,
        js: JetStreamContext,
        topology: Topology,
        spec: ConsumerSpec,
        handler: BatchHandler,
        *,
        batch: int = 256,
        fetch_timeout: float = 1.0,
    ) -> None:
        self._js = js
        self._topology = topology
        self._spec = spec
        self._handler = handler
        self._batch = batch
        self._fetch_timeout = fetch_timeout
        self.idle = asyncio.Event()
        self.idle.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch, handle, settle until ``stop``. A transient failure anywhere in that (NATS
        restarting, the database away) pauses the loop with backoff and it goes on by itself;
        what was fetched and not settled is redelivered after the ack wait. Anything else is a
        bug and propagates, after the messages on their last delivery are dead-lettered, so a
        crash never silently drops a message JetStream will not deliver again."""
        sub = await self._js.pull_subscribe_bind(
            durable=self._spec.durable, stream=self._spec.stream
        )
        backoff = Backoff()
        try:
            while not stop.is_set():
                msgs: list[Msg] = []
                try:
                    msgs = await self._fetch(sub, stop)
                    if msgs:
                        self.idle.clear()
                        await self._handle(msgs)
                    backoff.reset()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    await self._last_attempts_failed(msgs, exc)
                    if not is_transient(exc):
                        raise
                    delay = backoff.next()
                    log.warning(
                        "consumer paused: will go on by itself",
                        stream=self._spec.stream,
                        consumer=self._spec.durable,
                        error=describe(exc),
                        retry_in=delay,
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=delay)
                finally:
                    self.idle.set()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _last_attempts_failed(self, msgs: list[Msg], exc: BaseException) -> None:
        """The explicit last-attempt check: a message whose handling failed on the delivery
        JetStream counts as its last is dead-lettered now, with the failure as its reason."""
        for msg in msgs:
            deliveries = msg.metadata.num_delivered or 1
            if deliveries < self._spec.max_deliver or msg._ackd:  # settled before the failure
                continue
            try:
                await self._dead_letter(
                    msg, f"gave up after {deliveries} deliveries: {describe(exc)}", deliveries
                )
            except Exception as again:  # the same outage: JetStream's advisory is all that is left
                log.error(
                    "could not dead-letter a message on its last delivery",
                    subject=msg.subject,
                    error=describe(again),
                )

    async def _fetch(
        self, sub: JetStreamContext.PullSubscription, stop: asyncio.Event
    ) -> list[Msg]:
        return await fetch_unless_stopped(sub, self._batch, self._fetch_timeout, stop)

    async def _handle(self, msgs: list[Msg]) -> None:
        started = time.perf_counter()
        spec = self._spec
        good: list[Incoming] = []
        for msg in msgs:
            deliveries = msg.metadata.num_delivered or 1
            try:
                good.append(Incoming(msg=msg, message=decode(msg.data), deliveries=deliveries))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                await self._dead_letter(msg, f"undecodable message: {exc}", deliveries)
        outcomes = await self._handler(good) if good else []
        if len(outcomes) != len(good):
            raise RuntimeError(
                f"handler returned {len(outcomes)} outcomes for {len(good)} messages"
            )
        for item, outcome in zip(good, outcomes, strict=True):
            await self._settle(item, outcome)
        HANDLE_SECONDS.labels(spec.stream, spec.durable).observe(time.perf_counter() - started)

    async def _settle(self, item: Incoming, outcome: Outcome) -> None:
        spec = self._spec
        match outcome:
            case Ack():
                await item.msg.ack()
                MESSAGES_HANDLED.labels(spec.stream, spec.durable, "ack").inc()
            case Retry(reason=reason, delay=delay):
                if item.deliveries >= spec.max_deliver:
                    await self._dead_letter(
                        item.msg,
                        f"gave up after {item.deliveries} deliveries: {reason}",
                        item.deliveries,
                    )
                    return
                await item.msg.nak(delay=self.backoff(item.deliveries) if delay is None else delay)
                MESSAGES_HANDLED.labels(spec.stream, spec.durable, "retry").inc()
                log.warning(
                    "message will be retried",
                    subject=item.subject,
                    reason=reason,
                    deliveries=item.deliveries,
                )
            case Reject(reason=reason):
                await self._dead_letter(item.msg, reason, item.deliveries)

    def backoff(self, deliveries: int) -> float:
        ladder = self._spec.backoff
        if not ladder:
            return 1.0
        return ladder[min(deliveries, len(ladder)) - 1].total_seconds()

    async def _dead_letter(self, msg: Msg, reason: str, deliveries: int) -> None:
        spec = self._spec
        seq = msg.metadata.sequence.stream if msg.metadata.sequence else None
        letter = DeadLetter(
            stream=spec.stream,
            consumer=spec.durable,
            subject=msg.subject,
            reason=reason,
            deliveries=deliveries,
            at=datetime.now(UTC),
            data=msg.data,
            headers={k: str(v) for k, v in (msg.headers or {}).items()},
            stream_seq=seq,
        )
        await publish(
            self._js,
            self._topology.dead_letter_subject(spec.stream),
            letter,
            msg_id=f"dlq:{spec.stream}:{spec.durable}:{seq}",
        )
        await msg.term()
        MESSAGES_HANDLED.labels(spec.stream, spec.durable, "dead_letter").inc()
        DEAD_LETTERS.labels(spec.stream, spec.durable).inc()
        log.error("message dead-lettered", subject=msg.subject, reason=reason, seq=seq)
