"""Trace context travels in NATS headers: a consumer's span continues the publisher's trace."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from nats.js.client import JetStreamContext
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from cairn_common.bus import provision, provision_topology, publish
from cairn_common.consume import ACK, Incoming, Outcome, PullConsumer, one_at_a_time
from cairn_common.topology import Topology
from tests.foundation.test_bus import Running, make_event
from tests.support.counting_worker import counting_consumer

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="session")
def tracing() -> InMemorySpanExporter:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    return EXPORTER


@pytest.fixture
def spans(tracing: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    tracing.clear()
    yield tracing
    tracing.clear()


async def test_consumer_span_continues_the_publishers_trace(
    js: JetStreamContext, topology: Topology, spans: InMemorySpanExporter
) -> None:
    await provision_topology(js, topology)
    seen_trace_ids: list[int] = []
    done = asyncio.Event()

    async def handle(item: Incoming) -> Outcome:
        seen_trace_ids.append(trace.get_current_span().get_span_context().trace_id)
        done.set()
        return ACK

    subject = topology.input_subject(5, "event")
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("POST /v1/track") as request_span:
        await publish(js, subject, make_event(1), msg_id="m-1")
    request_trace = request_span.get_span_context().trace_id

    spec = counting_consumer(topology)
    await provision(js, [], [spec])
    async with Running(PullConsumer(js, topology, spec, one_at_a_time(handle, "matcher"))):
        await asyncio.wait_for(done.wait(), 10)

    assert seen_trace_ids == [request_trace]
    by_name = {s.name: s for s in spans.get_finished_spans()}
    send = by_name[f"send {subject}"]
    process = by_name[f"process {subject}"]
    assert send.kind == SpanKind.PRODUCER
    assert process.kind == SpanKind.CONSUMER
    assert send.parent is not None
    assert send.parent.span_id == request_span.get_span_context().span_id
    assert process.parent is not None
    assert process.parent.span_id == send.context.span_id
    assert process.attributes is not None
    assert process.attributes["messaging.system"] == "nats"
    assert process.attributes["messaging.destination.name"] == subject
