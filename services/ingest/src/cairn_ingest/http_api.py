"""The public HTTP listener: Segment's Tracking API, CloudEvents, and email tracking links.

Bodies are read here (bounded, gzip/deflate decoded by us so a bad or oversized stream gets a
JSON error like everything else); what to do with them is ``Ingestor``'s business.
"""

from __future__ import annotations

import base64
import binascii
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind
from prometheus_client import Counter, Histogram

from cairn_common.observability import tracing_enabled
from cairn_ingest.email_links import EmailLinks
from cairn_ingest.intake import SINGLE_TYPES, Ingestor, Reply, error

# Segment's short paths (/v1/t, ...) and /v1/import, the old name of /v1/batch.
_SHORT = {"t": "track", "i": "identify", "p": "page", "s": "screen", "g": "group", "a": "alias"}
tracer = trace.get_tracer("cairn.ingest")
REQUESTS = Counter(
    "cairn_ingest_http_requests_total",
    "Tracking API requests by route and status",
    ["route", "status"],
)
REQUEST_SECONDS = Histogram(
    "cairn_ingest_http_request_seconds",
    "Time from request start to answer (includes waiting for JetStream's acknowledgements)",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
INGESTOR: web.AppKey[Ingestor] = web.AppKey("ingestor", Ingestor)


def basic_user(request: web.Request) -> str | None:
    """The write key sent as the HTTP Basic user (``key:`` or ``key`` alone)."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    return decoded.partition(":")[0] or None


class BodyError(Exception):
    def __init__(self, reply: Reply) -> None:
        self.reply = reply


async def read_body(request: web.Request, limit: int) -> bytes:
    """The decoded body, at most ``limit`` bytes before and after decompression."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyError(_too_large(request.content_length, limit))
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > limit:
                raise BodyError(_too_large(None, limit))
            chunks.append(chunk)
    except (ConnectionError, OSError) as exc:
        raise BodyError(error(400, "bad_body", f"could not read the body: {exc}")) from exc
    raw = b"".join(chunks)
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return raw
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
    if encoding not in wbits:
        raise BodyError(
            error(415, "unsupported_encoding", f"Content-Encoding {encoding!r}: use gzip")
        )
    inflater = zlib.decompressobj(wbits[encoding])
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise BodyError(error(400, "bad_encoding", f"body is not valid {encoding}: {exc}")) from exc
    if len(body) > limit or inflater.unconsumed_tail:
        raise BodyError(_too_large(None, limit))
    if not inflater.eof:
        raise BodyError(error(400, "bad_encoding", f"body is truncated {encoding}"))
    return body


def _too_large(size: int | None, limit: int) -> Reply:
    said = f"{size} bytes" if size is not None else "too large"
    return error(413, "batch_too_large", f"request body is {said}; the limit is {limit} bytes")


def respond(reply: Reply) -> web.Response:
    return web.Response(
        body=reply.body,
        status=reply.status,
        headers=reply.headers,
        content_type="application/json",
    )


async def segment_call(request: web.Request) -> web.Response:
    ingestor = request.app[INGESTOR]
    name = request.match_info["kind"]
    kind = _SHORT.get(name, name)
    if kind in ("batch", "b", "import"):
        single = None
    elif kind in SINGLE_TYPES:
        single = kind
    else:
        return respond(error(404, "not_found", f"no such endpoint: /v1/{name}"))
    try:
        body = await read_body(request, ingestor.settings.max_batch_bytes)
    except BodyError as exc:
        return respond(exc.reply)
    return respond(await ingestor.segment(single, body, basic_user(request), "http"))


async def cloudevents_call(request: web.Request) -> web.Response:
    ingestor = request.app[INGESTOR]
    try:
        body = await read_body(request, ingestor.settings.max_batch_bytes)
    except BodyError as exc:
        return respond(exc.reply)
    reply = await ingestor.cloudevents(
        body,
        request.headers,
        request.headers.get("Content-Type", ""),
        basic_user(request) or request.query.get("writeKey"),
    )
    return respond(reply)


def _server_span(request: web.Request, name: str) -> AbstractContextManager[Span | None]:
    return tracer.start_as_current_span(
        f"{request.method} {name}",
        context=propagate.extract(request.headers),
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": request.method,
            "http.route": name,
            "url.path": request.path,
        },
    )


@contextmanager
def _passed_on(request: web.Request) -> Iterator[None]:
    """Tracing off: no span (it would cost more than a small request's own work), but a
    ``traceparent`` the client sent still travels on with its events."""
    if "traceparent" not in request.headers:
        yield None
        return
    token = otel_context.attach(propagate.extract(request.headers))
    try:
        yield None
    finally:
        otel_context.detach(token)


@web.middleware
async def traced(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """A SERVER span per request, continuing the client's W3C ``traceparent`` if it sent one;
    the events it publishes carry this span's context into NATS, so one trace runs from the
    request to the delivered message."""
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    status = 500
    started = time.perf_counter()
    scope = _server_span(request, name) if tracing_enabled() else _passed_on(request)
    with scope as span:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # redirects (the click links) travel as exceptions
            status = exc.status
            raise
        else:
            status = response.status
            return response
        finally:
            if span is not None:
                span.set_attribute("http.response.status_code", status)
            REQUESTS.labels(name, str(status)).inc()
            REQUEST_SECONDS.labels(name).observe(time.perf_counter() - started)


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error is JSON ``{"code", "message"}``, including aiohttp's own (404, 405, ...)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        reply = error(exc.status, code, exc.text or exc.reason)
        return web.Response(
            body=reply.body,
            status=exc.status,
            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
            content_type="application/json",
        )


def build_app(ingestor: Ingestor, links: EmailLinks | None) -> web.Application:
    app = web.Application(
        middlewares=[traced, json_errors], client_max_size=ingestor.settings.max_batch_bytes
    )
    app[INGESTOR] = ingestor
    app.router.add_post("/v1/cloudevents", cloudevents_call)
    app.router.add_post("/v1/{kind}", segment_call)
    if links is not None:
        links.add_routes(app.router)
    return app
