"""The transactional outbox: messages are committed with the state change that caused them and
published afterwards with ``Nats-Msg-Id`` = their deterministic id, then deleted.

The partition worker publishes right after its commit. If that fails (NATS down, crash between
commit and publish), the rows stay, and the relay publishes anything older than ``relay_after``
seconds. JetStream's dedupe window and the dispatcher's ledger make a second publish harmless.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg
import msgspec
import structlog
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from prometheus_client import Counter

from cairn_common.publishing import Outgoing, PublishFailed, publish_batch
from cairn_common.waiting import wait_any

log = structlog.get_logger(__name__)

OUTBOX_PUBLISHED = Counter(
    "cairn_matcher_outbox_published_total", "Outbox messages published", ["path"]
)
TRANSIENT = (PublishFailed, NatsError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
             TimeoutError)  # fmt: skip


class OutboxMessage(msgspec.Struct, frozen=True):
    id: int
    subject: str
    msg_id: str
    payload: bytes
    traceparent: str | None = None


def _outgoing(messages: Sequence[OutboxMessage]) -> list[Outgoing]:
    """Each message is sent in the trace of the input that emitted it (kept with the row)."""
    return [Outgoing(m.subject, m.payload, m.msg_id, traceparent=m.traceparent) for m in messages]


class Outbox:
    def __init__(self, js: JetStreamContext, pool: asyncpg.Pool, *, relay_after: float) -> None:
        self._js = js
        self._pool = pool
        self._relay_after = relay_after

    async def publish(
        self, messages: Sequence[OutboxMessage], conn: asyncpg.Connection | None = None
    ) -> None:
        """Right after the commit that wrote them: publish, then delete (on ``conn`` if given).
        A failure leaves them to the relay; the commit stands either way."""
        if not messages:
            return
        try:
            await publish_batch(self._js, _outgoing(messages))
            await (conn or self._pool).execute(
                "DELETE FROM outbox WHERE id = ANY($1)", [m.id for m in messages]
            )
        except TRANSIENT as exc:
            log.warning("outbox publish failed; the relay will retry", error=repr(exc),
                        count=len(messages))  # fmt: skip
            return
        OUTBOX_PUBLISHED.labels("direct").inc(len(messages))

    async def relay(self, stop: asyncio.Event, interval: float = 2.0) -> None:
        """Publish what a crash or a NATS outage left behind."""
        while not stop.is_set():
            try:
                while await self.relay_once() and not stop.is_set():
                    pass
            except TRANSIENT as exc:
                log.warning("outbox relay failed; will retry", error=repr(exc))
            await wait_any(stop, timeout=interval)

    async def relay_once(self, limit: int = 1000) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, subject, msg_id, payload, traceparent FROM outbox "
                "WHERE created_at < now() - make_interval(secs => $1) "
                "ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
                self._relay_after,
                limit,
            )
            messages = [OutboxMessage(*r) for r in rows]
            if messages:
                log.info("relaying outbox messages", count=len(messages))
                await publish_batch(self._js, _outgoing(messages))
                # same connection: this transaction holds the rows' locks
                await conn.execute(
                    "DELETE FROM outbox WHERE id = ANY($1)", [m.id for m in messages]
                )
                OUTBOX_PUBLISHED.labels("relay").inc(len(messages))
        return len(messages)
