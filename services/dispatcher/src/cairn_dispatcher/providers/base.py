"""What every provider shares: the job it gets, the outcomes it returns, HTTP classification."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import msgspec
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from cairn_common.messages import DeliveryRequested
from cairn_dispatcher.documents import Target
from cairn_dispatcher.egress import sanitise
from cairn_journey.render import Rendered

tracer = trace.get_tracer("cairn.dispatcher.providers")


@contextmanager
def client_span(
    name: str, provider: str, host: str | None, port: int | None, **attributes: str | int
) -> Iterator[Span]:
    """A CLIENT span around one provider call (OpenTelemetry HTTP/network conventions), child of
    the delivery's span. Only the host and port are recorded: URLs and addresses can carry keys
    and personal data."""
    attrs: dict[str, str | int] = {"cairn.provider": provider, **attributes}
    if host:
        attrs["server.address"] = host
    if port:
        attrs["server.port"] = port
    with tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attrs) as span:
        yield span


def mark_outcome(span: Span, outcome: SendOutcome) -> None:
    if isinstance(outcome, Failed):
        span.set_status(trace.Status(trace.StatusCode.ERROR, outcome.reason[:200]))


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """One send: the request, where it goes, and what the template produced (if any)."""

    request: DeliveryRequested
    target: Target
    address: str | None
    rendered: Rendered | None

    @property
    def idempotency_key(self) -> str:
        return self.request.delivery_id

    def journey_context(self) -> dict[str, Any]:
        """The journey's context as Segment's journey events carry it to destinations."""
        req = self.request
        return {
            "journey_name": req.journey,
            "journey_version": req.version,
            "journey_instance_id": req.instance_id,
            "step_id": req.step_id,
            "delivery_id": req.delivery_id,
            "journey_context": {
                "triggering_event": req.event,
                "matched_events": req.matched_events,
            },
        }


class Sent(msgspec.Struct, frozen=True):
    provider_message_id: str | None = None


class Failed(msgspec.Struct, frozen=True, kw_only=True):
    reason: str
    retryable: bool
    retry_after: float | None = None
    bounced: bool = False
    """The address is dead (hard bounce, uninstalled app): suppress it, outcome ``bounced``."""
    unsubscribed: bool = False
    """The provider says the person opted out (e.g. replied STOP): suppress, ``suppressed``."""


SendOutcome = Sent | Failed


class Provider(Protocol):
    async def send(self, job: Job) -> SendOutcome: ...

    async def close(self) -> None: ...


class PermanentError(Exception):
    """Raised inside a provider for a failure retrying cannot fix (bad config, bad address)."""


def path_segment(name: str, value: str) -> str:
    """``value`` (from data: a profile id, an address) as one percent-encoded URL path segment.

    Every character outside the unreserved set is encoded, ``/``, ``?``, ``#`` and ``%`` included,
    so data can never add a segment, a query or a fragment to a provider's URL and reach another
    endpoint with the destination's credentials. A value that would still be a dot segment (or
    empty) is a permanent failure naming it."""
    if value in ("", ".", ".."):
        raise PermanentError(f"{name} {value!r} cannot be a URL path segment")
    return quote(value, safe="")


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


MAX_BODY = 64 * 1024
"""The most of a provider's answer read: enough for any API's JSON, and a hostile endpoint that
streams without end costs nothing."""


async def read_bounded(response: aiohttp.ClientResponse, limit: int = MAX_BODY) -> bytes:
    body = bytearray()
    while len(body) < limit:
        chunk = await response.content.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


async def http_outcome(
    response: aiohttp.ClientResponse, provider: str, id_field: str | None = None
) -> SendOutcome:
    """429 and 5xx retry (honouring Retry-After), other 4xx are permanent, 2xx sent.

    A 3xx is permanent too: redirects are not followed (a hop could lead anywhere). The reason
    keeps the status and a short, single-line excerpt of the body (``egress.sanitise``), never
    the whole answer of a server the address came from data."""
    body = await read_bounded(response)
    if 200 <= response.status < 300:
        return Sent(_field(body.decode("utf-8", "replace"), id_field) if id_field else None)
    if 300 <= response.status < 400:
        return Failed(
            reason=f"{provider} answered {response.status}, a redirect, which is not followed",
            retryable=False,
        )
    reason = f"{provider} answered {response.status}: {sanitise(body.decode('utf-8', 'replace'))}"
    if response.status == 429 or response.status >= 500 or response.status == 408:
        return Failed(
            reason=reason,
            retryable=True,
            retry_after=retry_after_seconds(response.headers.get("Retry-After")),
        )
    return Failed(reason=reason, retryable=False)


def _field(text: str, path: str) -> str | None:
    try:
        value: Any = json.loads(text)
    except ValueError:
        return None
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return None if value is None else str(value)


def connection_failed(provider: str, exc: BaseException) -> Failed:
    return Failed(reason=sanitise(f"{provider}: {type(exc).__name__}: {exc}"), retryable=True)
