"""One trace per event across real service processes, exported over OTLP/HTTP.

An event sent to the Tracking API starts a trace that runs through ingest, the matcher and the
dispatcher to the provider call. A wait ends in a trace of its own, started by the scheduler's
fire, which links back to the trace that set the timer.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import pytest
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from cairn_common.topology import Topology
from tests.dispatcher.support import LOOPBACK, HttpSink, apply, eventually
from tests.observability.support import Link, OtlpCollector, RecordedSpan, start_system
from tests.support.engine import prepared, publish_journey
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.e2e

TRACED = {
    "kind": "Journey",
    "name": "traced",
    "trigger": {"event": "Cart Abandoned"},
    "steps": [
        {"id": "ping", "send": {"channel": "webhook", "template": "hook"}},
        {"id": "pause", "wait": "1s"},
        {"id": "again", "send": {"channel": "webhook", "template": "hook"}},
    ],
}


@pytest.fixture
async def collector() -> AsyncIterator[OtlpCollector]:
    server = await OtlpCollector().start()
    yield server
    await server.stop()


@pytest.fixture
async def sink() -> AsyncIterator[HttpSink]:
    server = await HttpSink().start()
    yield server
    await server.stop()


def _child(spans: list[RecordedSpan], parent: RecordedSpan, **where: object) -> RecordedSpan:
    """The one span among ``spans`` whose parent is ``parent`` (same trace)."""
    children = [
        s
        for s in spans
        if s.parent_span_id == parent.span_id
        and s.trace_id == parent.trace_id
        and all(getattr(s, k) == v for k, v in where.items())
    ]
    assert len(children) == 1, f"expected one child {where} of {parent.name}: {children}"
    return children[0]


def _delivery_chain(spans: list[RecordedSpan], matcher_span: RecordedSpan) -> RecordedSpan:
    """From a matcher input span down to the provider call; returns the dispatcher's span."""
    send = _child(spans, matcher_span, service="cairn-matcher", kind="PRODUCER")
    assert send.destination.endswith(".deliveries.webhook")
    assert send.attributes["messaging.operation.type"] == "send"
    dispatch = _child(spans, send, service="cairn-dispatcher", kind="CONSUMER")
    assert dispatch.attributes["messaging.system"] == "nats"
    assert dispatch.attributes["messaging.operation.type"] == "process"
    assert dispatch.attributes["cairn.delivery.outcome"] == "sent"
    call = _child(spans, dispatch, service="cairn-dispatcher", kind="CLIENT")
    assert call.attributes["http.request.method"] == "POST"
    assert call.attributes["server.address"] == "127.0.0.1"
    assert call.attributes["http.response.status_code"] == 200
    return dispatch


async def test_one_trace_runs_from_the_tracking_request_to_the_provider_call(
    collector: OtlpCollector,
    sink: HttpSink,
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    pool = await prepared(database_url, js, topology)
    async with pool.acquire() as db:
        await apply(
            db,
            "Channel",
            "webhook",
            {"provider": "webhook", "endpoint": sink.url, "options": {"allow_networks": LOOPBACK}},
        )
        await apply(db, "Template", "hook", {"channel": "webhook", "body": '{"n": 1}'})
    await publish_journey(pool, TRACED)
    system = await start_system(spawn, pool, **collector.env())

    await system.post("/v1/track", {"userId": "ann", "event": "Cart Abandoned"})
    await eventually(lambda: len(sink.requests) == 2)
    # Every process exports on its own schedule: wait for each span the chain needs.
    for count, where in [
        (1, {"service": "cairn-ingest", "kind": "SERVER"}),
        (1, {"service": "cairn-ingest", "kind": "PRODUCER"}),
        (4, {"service": "cairn-matcher", "kind": "CONSUMER"}),  # event, timer, two results
        (2, {"service": "cairn-matcher", "kind": "PRODUCER"}),
        (1, {"service": "cairn-scheduler", "kind": "PRODUCER"}),
        (2, {"service": "cairn-dispatcher", "kind": "CONSUMER"}),
        (2, {"service": "cairn-dispatcher", "kind": "CLIENT"}),
    ]:
        await collector.until(count, **where)
    spans = collector.spans

    # The request's trace: HTTP server -> ingest publish -> matcher -> outbox -> dispatcher -> call
    (request,) = collector.find(service="cairn-ingest", kind="SERVER", name="POST /v1/{kind}")
    assert request.attributes["http.route"] == "/v1/{kind}"
    publish = _child(spans, request, service="cairn-ingest", kind="PRODUCER")
    assert publish.attributes["messaging.system"] == "nats"
    assert publish.destination.endswith(".event")
    matched = _child(spans, publish, service="cairn-matcher", kind="CONSUMER")
    assert matched.attributes["messaging.operation.type"] == "process"
    assert matched.attributes["messaging.message.id"] == publish.attributes["messaging.message.id"]
    dispatch = _delivery_chain(spans, matched)
    # ... and the delivery result re-enters the matcher in the same trace.
    result = _child(spans, dispatch, service="cairn-matcher", kind="CONSUMER")
    assert result.destination.endswith(".result")
    assert sink.requests[0].headers["traceparent"].split("-")[1] == request.trace_id

    # The wait's fire: a trace of its own that links to the span that set the timer (the wait
    # starts when the send's result arrives: it counts from the real sending).
    (fire,) = collector.find(service="cairn-scheduler", kind="PRODUCER")
    assert fire.destination.endswith(".timer")
    assert fire.trace_id != request.trace_id
    assert fire.links == (Link(request.trace_id, result.span_id),)
    timer = _child(spans, fire, service="cairn-matcher", kind="CONSUMER")
    _delivery_chain(spans, timer)
    assert sink.requests[1].headers["traceparent"].split("-")[1] == fire.trace_id
    await pool.close()


async def test_an_event_ingested_over_nats_continues_the_requesters_trace(
    collector: OtlpCollector,
    spawn: Callable[..., ServiceProcess],
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    pool = await prepared(database_url, js, topology)
    await publish_journey(pool, TRACED)
    system = await start_system(spawn, pool, services=("ingest", "matcher"), **collector.env())
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    reply = await nc.request(
        f"{topology.namespace}.ingest.track",
        json.dumps(
            {"userId": "ann", "event": "Page Viewed", "writeKey": system.write_key}
        ).encode(),
        headers={"traceparent": f"00-{trace_id}-{parent}-01"},
        timeout=10,
    )
    assert json.loads(reply.data) == {"success": True}

    (processed,) = await collector.until(1, service="cairn-matcher", kind="CONSUMER")
    (request,) = await collector.until(1, service="cairn-ingest", kind="CONSUMER")
    await collector.until(1, service="cairn-ingest", kind="PRODUCER")
    assert (request.trace_id, request.parent_span_id) == (trace_id, parent)
    assert request.destination == f"{topology.namespace}.ingest.track"
    publish = _child(collector.spans, request, service="cairn-ingest", kind="PRODUCER")
    assert (processed.trace_id, processed.parent_span_id) == (trace_id, publish.span_id)
    await pool.close()
