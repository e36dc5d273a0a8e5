"""The transactional outbox: messages are committed with the state change that caused them and
published afterwards with ``Nats-Msg-Id`` = their deterministic id, then deleted.

The committer publishes right after its commit (the partitions it committed go on to their next
batches meanwhile). If that fails (NATS down, crash between commit and publish), the rows stay, and
the relay publishes anything older than ``relay_after`` seconds. JetStream's dedupe window and the
dispatcher's ledger make a second publish harmless, which is also why the published rows are
deleted in the background, many commits' rows at a time and without waiting for the WAL flush
(``delete_published``): a delete lost in a crash only means one more harmless publish.

No row blocks the ones behind it. Both paths decide with the failure policy
(``cairn_common.failures``): a transient failure leaves the rows for a later attempt (the relay
backs off); a row that can never be published (larger than ``max_bytes``, checked before
publishing, or refused by JetStream for a permanent reason) is dead-lettered with the reason and
deleted, and when it is a delivery request, a ``failed`` ``DeliveryResult`` goes to the profile's
partition as the dispatcher would report it, so the journey's send step finishes and the
analytics count the failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg
import msgspec
import structlog
from nats.js.client import JetStreamContext
from prometheus_client import Counter

from cairn_common.bus import MSG_ID
from cairn_common.failures import (
    Backoff,
    Failure,
    PermanentInputError,
    classify,
    describe,
)
from cairn_common.messages import DeadLetter, DeliveryRequested, DeliveryResult, decode, encode
from cairn_common.partitioning import partition_for
from cairn_common.publishing import ACK_TIMEOUT, Outgoing, publish_batch
from cairn_common.topology import Topology
from cairn_common.waiting import wait_any

log = structlog.get_logger(__name__)

OUTBOX_PUBLISHED = Counter(
    "cairn_matcher_outbox_published_total", "Outbox messages published", ["path"]
)
OUTBOX_DEAD_LETTERED = Counter(
    "cairn_matcher_outbox_dead_lettered_total",
    "Outbox messages that could never be published, dead-lettered with the reason",
)

HEADROOM_BYTES = 8 * 1024
"""Below the server's ``max_payload``, room for headers (trace context, ``Nats-Msg-Id``)."""
DEAD_LETTER_CONSUMER = "matcher-outbox"


def payload_bound(max_payload: int) -> int:
    """The default size bound of an outbox message for a server announcing ``max_payload``."""
    return max(1024, max_payload - HEADROOM_BYTES)


class OutboxMessage(msgspec.Struct, frozen=True):
    id: int
    subject: str
    msg_id: str
    payload: bytes
    traceparent: str | None = None


class Attempt(msgspec.Struct):
    """What one publishing attempt settled: rows published, rows that failed for good (with the
    exception), and the transient failure that left the rest for later, if any."""

    published: list[OutboxMessage] = msgspec.field(default_factory=list)
    refused: list[tuple[OutboxMessage, BaseException]] = msgspec.field(default_factory=list)
    transient: BaseException | None = None

    @property
    def settled(self) -> list[int]:
        return [m.id for m in self.published] + [m.id for m, _ in self.refused]


def _outgoing(messages: Sequence[OutboxMessage]) -> list[Outgoing]:
    """Each message is sent in the trace of the input that emitted it (kept with the row)."""
    return [Outgoing(m.subject, m.payload, m.msg_id, traceparent=m.traceparent) for m in messages]


class Outbox:
    def __init__(
        self,
        js: JetStreamContext,
        pool: asyncpg.Pool,
        *,
        relay_after: float,
        topology: Topology,
        partitions: int,
        max_bytes: int,
    ) -> None:
        """``max_bytes``: the largest payload published (``payload_bound`` of the server's
        ``max_payload`` by default); ``partitions`` places a failed result in its profile's."""
        self._js = js
        self._pool = pool
        self._relay_after = relay_after
        self._topology = topology
        self._partitions = partitions
        self._max_bytes = max_bytes
        self._settled: list[int] = []
        """Rows published (or dead-lettered) on the fast path, not deleted yet."""
        self._has_settled = asyncio.Event()

    async def publish(self, messages: Sequence[OutboxMessage]) -> None:
        """Right after the commit that wrote them: publish; the rows are deleted later
        (``delete_published``). A transient failure leaves them to the relay; the commit stands
        either way."""
        if not messages:
            return
        try:
            attempt = await self._attempt(messages)
        except Exception as exc:
            if classify(exc) is not Failure.TRANSIENT:
                raise
            attempt = Attempt(transient=exc)
        if attempt.transient is not None:
            log.warning("outbox publish failed; the relay will retry",
                        error=describe(attempt.transient), count=len(messages))  # fmt: skip
        OUTBOX_PUBLISHED.labels("direct").inc(len(attempt.published))
        if attempt.settled:
            self._settled.extend(attempt.settled)
            self._has_settled.set()

    async def delete_published(self, stop: asyncio.Event, pause: float = 0.05) -> None:
        """Delete the rows ``publish`` settled, every ``pause`` seconds at most, until ``stop``
        (then once more). While PostgreSQL is unreachable the ids wait in memory; the relay
        does not take a row younger than ``relay_after``, so it rarely publishes one again."""
        backoff = Backoff(first=pause, cap=max(pause, 5.0))
        while True:
            await wait_any(stop, self._has_settled)
            stopping = stop.is_set()
            try:
                await self.flush_deletes()
                backoff.reset()
            except Exception as exc:
                if classify(exc) is not Failure.TRANSIENT:
                    raise
                log.warning("deleting published outbox rows failed; will retry",
                            error=describe(exc), rows=len(self._settled))  # fmt: skip
                if stopping:
                    return  # the next start's relay publishes them again, harmlessly
                await wait_any(stop, timeout=backoff.next())
                continue
            if stopping:
                return
            await wait_any(stop, timeout=pause)

    async def flush_deletes(self) -> None:
        """Delete every row settled so far, in one transaction that does not wait for its WAL
        flush. On failure the ids are kept for the next attempt."""
        ids, self._settled = self._settled, []
        self._has_settled.clear()
        if not ids:
            return
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SET LOCAL synchronous_commit = off")
                await self._delete(conn, ids)
        except BaseException:
            self._settled[:0] = ids
            self._has_settled.set()
            raise

    async def relay(self, stop: asyncio.Event, interval: float = 2.0) -> None:
        """Publish what a crash or a NATS outage left behind; back off while it keeps failing."""
        backoff = Backoff(first=interval, cap=max(interval, 30.0))
        while not stop.is_set():
            delay = interval
            try:
                while await self.relay_once() and not stop.is_set():
                    pass
                backoff.reset()
            except Exception as exc:
                if classify(exc) is not Failure.TRANSIENT:
                    raise
                delay = backoff.next()
                log.warning("outbox relay failed; will retry", error=describe(exc), delay=delay)
            await wait_any(stop, timeout=delay)

    async def relay_once(self, limit: int = 1000) -> int:
        """One batch of left-behind rows, oldest first; returns how many were settled. Raises the
        transient failure that left some unsettled (after deleting the settled ones)."""
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                rows = await conn.fetch(
                    "SELECT id, subject, msg_id, payload, traceparent FROM outbox "
                    "WHERE created_at < now() - make_interval(secs => $1) "
                    "ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
                    self._relay_after,
                    limit,
                )
                messages = [OutboxMessage(*r) for r in rows]
                if not messages:
                    return 0
                log.info("relaying outbox messages", count=len(messages))
                attempt = await self._attempt(messages)
                # same connection: this transaction holds the rows' locks
                await self._delete(conn, attempt.settled)
            OUTBOX_PUBLISHED.labels("relay").inc(len(attempt.published))
            if attempt.transient is not None:
                raise attempt.transient
            return len(attempt.settled)

    async def _attempt(self, messages: Sequence[OutboxMessage]) -> Attempt:
        """Publish ``messages`` as one batch; if that fails, find the message JetStream refuses
        for good, if any, by publishing them one by one. Refused ones are dead-lettered before
        this returns."""
        attempt = Attempt()
        fits: list[OutboxMessage] = []
        for m in messages:
            if len(m.payload) > self._max_bytes:
                too_big = PermanentInputError(
                    f"message of {len(m.payload)} bytes is larger than the outbox bound of "
                    f"{self._max_bytes} bytes"
                )
                attempt.refused.append((m, too_big))
            else:
                fits.append(m)
        try:
            await publish_batch(self._js, _outgoing(fits))
            attempt.published.extend(fits)
        except Exception as exc:
            if classify(exc) is Failure.BUG:
                raise
            await self._one_by_one(fits, attempt)
        await self._dead_letter(attempt)
        return attempt

    async def _one_by_one(self, messages: Sequence[OutboxMessage], attempt: Attempt) -> None:
        """After a failed batch: one request per message, until one fails transiently (then the
        rest wait for the next attempt). Even a transient-looking batch failure goes this way: a
        JetStream refusal inside ``publish_async`` surfaces only as a missing acknowledgement
        (nats-py never settles a future whose reply is an API error), while ``js.publish``
        raises the refusal itself."""
        for m in messages:
            headers = {MSG_ID: m.msg_id}
            if m.traceparent:
                headers["traceparent"] = m.traceparent
            try:
                await self._js.publish(m.subject, m.payload, timeout=ACK_TIMEOUT, headers=headers)
            except Exception as exc:
                match classify(exc):
                    case Failure.PERMANENT:
                        attempt.refused.append((m, exc))
                        continue
                    case Failure.TRANSIENT:
                        attempt.transient = exc
                        return
                    case Failure.BUG:
                        raise
            attempt.published.append(m)

    async def _dead_letter(self, attempt: Attempt) -> None:
        """Each refused row as a dead letter with its reason, plus a failed result for a delivery
        request. If even these cannot be published now, the rows stay (a transient failure)."""
        if not attempt.refused:
            return
        now = datetime.now(UTC)
        letters: list[Outgoing] = []
        for m, exc in attempt.refused:
            reason = describe(exc)
            log.error("outbox message dead-lettered", subject=m.subject, msg_id=m.msg_id,
                      reason=reason)  # fmt: skip
            letters.extend(self._reports(m, reason, now))
        try:
            await publish_batch(self._js, letters)
        except Exception as exc:
            if classify(exc) is not Failure.TRANSIENT:
                raise
            attempt.transient = exc
            attempt.refused = []
            return
        OUTBOX_DEAD_LETTERED.inc(len(attempt.refused))

    def _reports(self, m: OutboxMessage, reason: str, now: datetime) -> list[Outgoing]:
        """The dead letter (the payload kept when it fits the bound) and, for a delivery request,
        its failed ``DeliveryResult`` (``Nats-Msg-Id`` as the dispatcher's, so counted once)."""
        dlq = self._topology.dead_letter_subject("")
        stream = (
            self._topology.dead_letter_stream
            if m.subject.startswith(dlq)
            else self._topology.deliveries_stream
        )
        keep = len(m.payload) <= self._max_bytes - HEADROOM_BYTES - len(reason)
        letter = DeadLetter(
            stream=stream,
            consumer=DEAD_LETTER_CONSUMER,
            subject=m.subject,
            reason=reason,
            deliveries=0,
            at=now,
            data=m.payload if keep else b"",
            headers={MSG_ID: m.msg_id, "Cairn-Payload-Bytes": str(len(m.payload))},
        )
        out = [
            Outgoing(
                self._topology.dead_letter_subject(stream),
                encode(letter),
                f"dlq:outbox:{m.msg_id}",
                traceparent=m.traceparent,
            )
        ]
        request = _delivery_request(m.payload)
        if request is not None:
            result = DeliveryResult(
                delivery_id=request.delivery_id,
                profile_id=request.profile_id,
                partition=partition_for(request.profile_id, self._partitions),
                instance_id=request.instance_id,
                step_id=request.step_id,
                outcome="failed",
                at=now,
                channel=request.channel,
                destination=request.destination,
                reason=reason,
            )
            out.append(
                Outgoing(
                    self._topology.input_subject(result.partition, "result"),
                    encode(result),
                    f"result:{result.delivery_id}:{result.outcome}",
                    traceparent=m.traceparent,
                )
            )
        return out

    @staticmethod
    async def _delete(conn: asyncpg.Connection | asyncpg.Pool, ids: list[int]) -> None:
        if ids:
            await conn.execute("DELETE FROM outbox WHERE id = ANY($1)", sorted(ids))


def _delivery_request(payload: bytes) -> DeliveryRequested | None:
    try:
        message = decode(payload)
    except msgspec.DecodeError:
        return None
    return message if isinstance(message, DeliveryRequested) else None
