"""Logs (structlog), traces (OpenTelemetry over OTLP) and metrics (Prometheus) for every service."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind
from prometheus_client import Counter, Histogram

# ---- metrics shared by the common mechanisms ---------------------------------------------------

MESSAGES_HANDLED = Counter(
    "cairn_messages_handled_total",
    "Messages taken from a JetStream consumer, by outcome (ack, retry, dead_letter)",
    ["stream", "consumer", "outcome"],
)
HANDLE_SECONDS = Histogram(
    "cairn_handle_batch_seconds",
    "Time to handle one fetched batch, from fetch to the last ack",
    ["stream", "consumer"],
)
DEAD_LETTERS = Counter(
    "cairn_dead_letters_total", "Messages sent to the dead-letter stream", ["stream", "consumer"]
)


# ---- logging -----------------------------------------------------------------------------------


def _add_trace_ids(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event_dict.setdefault("span_id", format(ctx.span_id, "016x"))
    return event_dict


def configure_logging(service: str, *, fmt: str = "auto", level: str = "info") -> None:
    """JSON lines when not on a terminal (or ``fmt='json'``), readable key=value on a terminal."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_trace_ids,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)


# ---- tracing -----------------------------------------------------------------------------------


def configure_tracing(service: str) -> TracerProvider | None:
    """Export spans over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; otherwise the
    default no-op provider keeps tracing free."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": f"cairn-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def tracing_enabled() -> bool:
    """Whether spans are recorded (an SDK provider is installed). When not, the hot paths skip
    creating no-op spans (tens of µs each) and only pass the W3C context they received along."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)


@contextmanager
def consumer_span(
    name: str, headers: Mapping[str, str] | None, attributes: Mapping[str, Any]
) -> Iterator[Span]:
    """A CONSUMER span whose parent is the trace context that travelled in the NATS headers."""
    parent = propagate.extract(dict(headers or {}))
    tracer = trace.get_tracer("cairn.consume")
    with tracer.start_as_current_span(
        name, context=parent, kind=SpanKind.CONSUMER, attributes=dict(attributes)
    ) as span:
        ctx = span.get_span_context()
        tokens = structlog.contextvars.bind_contextvars(
            trace_id=format(ctx.trace_id, "032x") if ctx.is_valid else None
        )
        try:
            yield span
        finally:
            structlog.contextvars.reset_contextvars(**tokens)
