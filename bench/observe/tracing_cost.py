"""What tracing costs per message on the hot paths, without servers: the matcher's span per input
(consumer span from the headers + the traceparent kept with its rows) and the send span
``publish_batch`` opens per message (start, inject into headers, end).

Three ways: tracing off as the services run it (no ``OTEL_EXPORTER_OTLP_ENDPOINT``: no span is
made, the received traceparent is passed along), the no-op tracer's spans the services would make
without that check (for comparison), and the SDK provider with a batch processor feeding an
exporter that drops everything (the CPU a service spends when tracing is on, minus the network).

    uv run python bench/observe/tracing_cost.py [--n 50000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from cairn_common.observability import consumer_span, tracing_enabled
from cairn_common.publishing import Outgoing, _send_span, current_traceparent

HEADERS = {
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "Nats-Msg-Id": "m-1",
}
ATTRIBUTES = {
    "messaging.system": "nats",
    "messaging.destination.name": "cairn.inputs.7.event",
    "messaging.operation.type": "process",
}


class Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def matcher_input(n: int, check: bool) -> float:
    started = time.perf_counter()
    for _ in range(n):
        if check and not tracing_enabled():
            HEADERS.get("traceparent")
            continue
        with consumer_span("process cairn.inputs.7.event", HEADERS, ATTRIBUTES):
            current_traceparent()
    return (time.perf_counter() - started) / n


def publish_send(n: int, check: bool) -> float:
    message = Outgoing("cairn.deliveries.email", b"{}", "d-1", traceparent=HEADERS["traceparent"])
    started = time.perf_counter()
    for _ in range(n):
        headers: dict[str, str] = {}
        if check and not tracing_enabled():
            headers["traceparent"] = message.traceparent or ""
            continue
        span = _send_span(message)
        propagate.inject(headers, context=trace.set_span_in_context(span))
        span.end()
    return (time.perf_counter() - started) / n


def report(label: str, n: int, check: bool = True) -> None:
    print(
        f"{label:<30} matcher per input {matcher_input(n, check) * 1e6:6.1f} µs   "
        f"send per message {publish_send(n, check) * 1e6:6.1f} µs"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50_000)
    n = parser.parse_args().n
    report("tracing off (as run)", n)
    report("no-op spans (not used)", n, check=False)
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=1_000_000))
    trace.set_tracer_provider(provider)
    report("tracing on (SDK, batched)", n)
    provider.shutdown()


if __name__ == "__main__":
    main()
