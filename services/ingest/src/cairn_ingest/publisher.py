"""Getting accepted events into JetStream, once.

The order matters for "nothing answered 200 is lost":

1. ask PostgreSQL which messageIds were already accepted (beyond JetStream's duplicate window);
2. publish the rest concurrently, ``Nats-Msg-Id`` = messageId, and wait for every PubAck
   (JetStream itself drops a repeat inside its window, which also covers two racing requests);
3. only then record the messageIds in PostgreSQL.

A messageId is unique within its source, as Segment's are: the key of both steps is
``Event.dedupe_key`` (the write key's id and the messageId), so one write key's messageIds can never
shadow another's events. Cairn's own events (tracking hits) have no write key and keep theirs.

A crash between 2 and 3 leaves the events in JetStream but unrecorded: the client, never having
seen a 200, retries, and JetStream's window drops the repeat. Recording *before* publishing would
instead turn that crash into a loss (the retry would look like a duplicate).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import structlog
from nats.aio.client import Client as NATS
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import Counter

from cairn_common.bus import MSG_ID, trace_headers
from cairn_common.failures import describe, is_transient
from cairn_common.messages import Event, encode
from cairn_common.observability import tracing_enabled
from cairn_common.topology import Topology
from cairn_ingest import repo
from cairn_ingest.jetstream import BatchPublisher, PublishError

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("cairn.ingest")

EVENTS = Counter("cairn_ingest_events_total", "Events by outcome", ["source", "outcome"])


class Unavailable(Exception):
    """JetStream or PostgreSQL did not answer in time, or the inputs stream is full (``full``):
    the client should retry (503). Whatever of a batch was stored is recorded as accepted, so the
    retry stores only the rest."""

    def __init__(self, reason: str, *, full: bool = False) -> None:
        super().__init__(reason)
        self.full = full


class EventPublisher:
    def __init__(
        self,
        nc: NATS,
        pool: asyncpg.Pool,
        topology: Topology,
        *,
        timeout: float,
    ) -> None:
        self._batches = BatchPublisher(nc)
        self._pool = pool
        self._topology = topology
        self._timeout = timeout

    async def publish(self, events: Sequence[Event]) -> int:
        """Publish what is new; return how many were duplicates. ``Unavailable`` on failure."""
        fresh = _first_of_each_id(events)
        try:
            seen = await repo.already_seen(self._pool, [e.dedupe_key for e in fresh])
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise Unavailable(f"database unavailable: {exc}") from exc
        if seen:
            fresh = [e for e in fresh if e.dedupe_key not in seen]
        refused: PublishError | None = None
        if fresh:
            try:
                await self._publish_all(fresh)
            except PublishError as exc:
                refused = exc
            stored = (
                fresh
                if refused is None
                else [e for i, e in enumerate(fresh) if i not in refused.refused]
            )
            if stored:
                try:
                    await repo.remember(
                        self._pool, [e.dedupe_key for e in stored], stored[0].received_at
                    )
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    # In JetStream already; a retry inside its window is dropped there.
                    raise Unavailable(f"database unavailable: {exc}") from exc
            if refused is not None:
                EVENTS.labels(fresh[0].source, "accepted").inc(len(stored))
                raise Unavailable(
                    f"JetStream refused {len(refused.refused)} of {len(fresh)} events: {refused}",
                    full=refused.stream_full,
                ) from refused
        source = events[0].source if events else "http"
        EVENTS.labels(source, "accepted").inc(len(fresh))
        duplicates = len(events) - len(fresh)
        if duplicates:
            EVENTS.labels(source, "duplicate").inc(duplicates)
        return duplicates

    async def _publish_all(self, events: list[Event]) -> None:
        """One PRODUCER span for the publish (a batch is one send operation); every event
        carries its context, so the matcher's span for each is its child."""
        if not tracing_enabled():
            await self._publish_events(events)
            return
        subject = self._topology.input_subject
        destination = (
            subject(events[0].partition, "event")
            if len(events) == 1
            else f"{self._topology.namespace}.inputs.{{partition}}.event"
        )
        attributes: dict[str, str | int] = {
            "messaging.system": "nats",
            "messaging.destination.name": destination,
            "messaging.operation.type": "send",
        }
        if len(events) == 1:
            attributes["messaging.message.id"] = events[0].dedupe_key  # its Nats-Msg-Id
        else:
            attributes["messaging.batch.message_count"] = len(events)
        with tracer.start_as_current_span(
            f"send {destination}", kind=SpanKind.PRODUCER, attributes=attributes
        ):
            await self._publish_events(events)

    async def _publish_events(self, events: list[Event]) -> None:
        base = trace_headers()
        subject = self._topology.input_subject
        messages = [
            (subject(e.partition, "event"), encode(e), {**base, MSG_ID: e.dedupe_key})
            for e in events
        ]
        try:
            await self._batches.publish(messages, self._timeout)
        except TimeoutError as exc:
            raise Unavailable("JetStream did not acknowledge in time") from exc
        except PublishError:
            raise  # publish() records the stored part first
        except Exception as exc:
            if is_transient(exc):
                raise Unavailable(f"NATS unavailable: {describe(exc)}") from exc
            raise


def _first_of_each_id(events: Sequence[Event]) -> list[Event]:
    seen: set[str] = set()
    unique: list[Event] = []
    for event in events:
        if (key := event.dedupe_key) not in seen:
            seen.add(key)
            unique.append(event)
    return unique
