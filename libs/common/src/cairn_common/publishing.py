"""Publish many messages at once: every publish goes out before the first acknowledgement is
awaited (``publish_async``), so a batch costs about one round trip instead of one per message.

Used by the hot paths that emit in bulk: the matcher's outbox relay and the scheduler's fires.
Each message carries ``Nats-Msg-Id``, so a batch retried after a partial failure (or a crash) is
stored once by JetStream inside its duplicate window.

Each message gets a PRODUCER span ``send <subject>`` (OpenTelemetry messaging conventions) whose
context travels in its headers. Its parent is ``Outgoing.traceparent`` when the message was
caused by an earlier input (the matcher's outbox keeps the causing input's context with the
row), else the current span; ``Outgoing.link`` adds a span link (a fired timer links to the
trace that set it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec
from nats.js import api
from nats.js.client import JetStreamContext
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from cairn_common.bus import MSG_ID, trace_headers
from cairn_common.failures import PublishFailed
from cairn_common.observability import tracing_enabled

tracer = trace.get_tracer("cairn.publishing")

ACK_TIMEOUT = 2.0
"""How long a batch waits for its acknowledgements. JetStream answers in milliseconds, even
syncing every write; an ack missing for seconds almost always means the connection dropped
under the publish (a NATS restart: what was written to the dead socket is never answered), and
the caller's retry, deduplicated by ``Nats-Msg-Id``, is what gets it stored. Waiting longer only
delays that retry: at 10 s, every message in flight at a NATS restart reached its customer
10 s late (bench/e2e --faults)."""


class Outgoing(msgspec.Struct, frozen=True):
    subject: str
    payload: bytes
    msg_id: str
    traceparent: str | None = None
    """W3C traceparent of what caused this message: the parent of its send span."""
    link: str | None = None
    """W3C traceparent of a related trace (not the parent): becomes a span link."""


def current_traceparent() -> str | None:
    """The current span's W3C ``traceparent``, or ``None`` outside a recorded trace."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def context_of(traceparent: str | None) -> otel_context.Context | None:
    """The OpenTelemetry context a stored ``traceparent`` stands for (``None`` if absent)."""
    if not traceparent:
        return None
    return propagate.extract({"traceparent": traceparent})


def _send_span(m: Outgoing) -> Span:
    parent = context_of(m.traceparent)
    links: list[Link] = []
    if m.link:
        linked = trace.get_current_span(context_of(m.link)).get_span_context()
        if linked.is_valid:
            links.append(Link(linked))
    return tracer.start_span(
        f"send {m.subject}",
        context=parent,
        kind=SpanKind.PRODUCER,
        links=links,
        attributes={
            "messaging.system": "nats",
            "messaging.destination.name": m.subject,
            "messaging.operation.type": "send",
            "messaging.message.id": m.msg_id,
        },
    )


async def publish_batch(
    js: JetStreamContext, messages: Sequence[Outgoing], *, timeout: float = ACK_TIMEOUT
) -> list[api.PubAck]:
    """Publish every message and wait for all acknowledgements (in the order given).

    Raises ``PublishFailed`` naming the first failure if any message was refused or timed out.
    """
    if not messages:
        return []
    if not tracing_enabled():
        return await _publish_untraced(js, messages, timeout)
    futures: list[asyncio.Future[api.PubAck]] = []
    spans: list[Span] = []
    results: list[api.PubAck | BaseException] = []
    try:
        for m in messages:
            span = _send_span(m)
            spans.append(span)
            headers: dict[str, str] = {}
            propagate.inject(headers, context=trace.set_span_in_context(span))
            headers[MSG_ID] = m.msg_id
            futures.append(await js.publish_async(m.subject, m.payload, headers=headers))
        async with asyncio.timeout(timeout):
            results = await asyncio.gather(*futures, return_exceptions=True)
    except TimeoutError:
        raise PublishFailed(f"no acknowledgement within {timeout}s") from None
    finally:
        for f in futures:
            if not f.done():
                f.cancel()
        for i, span in enumerate(spans):
            result = results[i] if i < len(results) else None
            if not isinstance(result, api.PubAck):
                span.set_status(Status(StatusCode.ERROR, "not acknowledged"))
            span.end()
    return _acks(messages, results)


async def _publish_untraced(
    js: JetStreamContext, messages: Sequence[Outgoing], timeout: float
) -> list[api.PubAck]:
    """Tracing off: no spans; a message still carries the context it was caused in, if any."""
    futures: list[asyncio.Future[api.PubAck]] = []
    base = trace_headers()
    try:
        for m in messages:
            headers = {**base, "traceparent": m.traceparent} if m.traceparent else dict(base)
            headers[MSG_ID] = m.msg_id
            futures.append(await js.publish_async(m.subject, m.payload, headers=headers))
        async with asyncio.timeout(timeout):
            results = await asyncio.gather(*futures, return_exceptions=True)
    except TimeoutError:
        raise PublishFailed(f"no acknowledgement within {timeout}s") from None
    finally:
        for f in futures:
            if not f.done():
                f.cancel()
    return _acks(messages, results)


def _acks(
    messages: Sequence[Outgoing], results: Sequence[api.PubAck | BaseException]
) -> list[api.PubAck]:
    acks: list[api.PubAck] = []
    for m, result in zip(messages, results, strict=True):
        if isinstance(result, BaseException):
            raise PublishFailed(
                f"publish of {m.msg_id} to {m.subject} failed: {result!r}"
            ) from result
        acks.append(result)
    return acks
