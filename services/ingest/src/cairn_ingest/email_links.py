"""Email open pixel, click redirect and one-click unsubscribe (links sealed by the dispatcher
with ``cairn_common.tracking``; decision 0055).

A hit becomes a ``track`` event in the profile's partition, so journeys can wait for it:
``Email Opened``, ``Email Link Clicked`` (with ``url``) and ``Unsubscribed``, each with
``delivery_id``, ``instance_id``, ``journey``, ``step_id`` and ``channel``. Its messageId is the
same for every replay of a link (``tracking.hit_id``), so a journey and the analytics see one
input per (delivery, kind, link) however often the link is hit; every hit is counted in
``cairn_tracking_hits_total``.

A link past its time-to-live answers 410 and one that is not genuine 404 (the pixel still as a
GIF), or both redirect to ``CAIRN_TRACKING_FALLBACK_URL`` when it is set: a token that fails never
redirects anywhere it carries.

The person comes first: the pixel is served and the click redirected at once. An event JetStream
cannot take right then (NATS restarting, the stream full) waits in a bounded backlog and is
published again until it is stored (``HitBacklog``; replays are harmless, their messageId is the
same); only a hit still waiting when ingest stops, or one beyond the backlog's bound, is lost,
and each is counted and logged. Unsubscribing happens on POST only (RFC 8058 one-click, or the
button on the page GET shows), because mail scanners follow GET links nobody clicked.
"""

from __future__ import annotations

import asyncio
import html
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import structlog
from aiohttp import web
from prometheus_client import Counter, Gauge

from cairn_common.failures import Backoff
from cairn_common.messages import Event
from cairn_common.partitioning import partition_for
from cairn_common.tracking import (
    ExpiredToken,
    InvalidToken,
    LinkKind,
    LinkPayload,
    TrackingKeys,
    hit_id,
)
from cairn_common.waiting import wait_any
from cairn_ingest import repo
from cairn_ingest.intake import Ingestor
from cairn_ingest.publisher import Unavailable
from cairn_ingest.segment import now
from cairn_ingest.settings import Settings

log = structlog.get_logger(__name__)

PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,"
    b"\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
NO_STORE = {"Cache-Control": "no-store, no-cache, must-revalidate, private", "Pragma": "no-cache"}
DAY = 86400.0
HITS = Counter(
    "cairn_tracking_hits_total",
    "Tracking link hits: first (entered an event), replay (the same link again: no new event),"
    " expired, refused (not genuine)",
    ["kind", "outcome"],
)
BACKLOG = Gauge(
    "cairn_tracking_backlog", "Tracking events waiting for JetStream to take them (NATS was away)"
)
LOST = Counter(
    "cairn_tracking_events_lost_total",
    "Tracking events never stored: the backlog was full, or ingest stopped while they waited",
)


class HitBacklog:
    """Tracking events JetStream could not take when their link was hit, published again until
    it does: oldest first, up to ``limit`` waiting, retried with a doubling pause (50 ms to 2 s)
    so a restarting NATS server is caught up within moments of coming back."""

    def __init__(self, ingestor: Ingestor, limit: int) -> None:
        self._ingestor = ingestor
        self._limit = limit
        self._waiting: deque[Event] = deque()
        self._added = asyncio.Event()
        self._closed = False

    def add(self, event: Event) -> None:
        if self._closed:  # a request answered while ingest stops, after the last try
            LOST.inc()
            log.error("tracking event lost at stop",
                      delivery_id=event.properties.get("delivery_id"))  # fmt: skip
            return
        if len(self._waiting) >= self._limit:
            LOST.inc()
            log.error("tracking event lost: backlog full", limit=self._limit,
                      delivery_id=event.properties.get("delivery_id"))  # fmt: skip
            return
        self._waiting.append(event)
        BACKLOG.set(len(self._waiting))
        self._added.set()

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(first=0.05, cap=2.0)
        while True:
            if not self._waiting:
                if stop.is_set():
                    self._closed = True
                    return
                self._added.clear()
                await wait_any(stop, self._added)
                continue
            batch = [self._waiting[i] for i in range(min(100, len(self._waiting)))]
            try:
                await self._ingestor.internal(batch)
            except Unavailable as exc:
                if stop.is_set():  # one last try was made: what still waits is lost
                    LOST.inc(len(self._waiting))
                    log.error("tracking events lost at stop", count=len(self._waiting),
                              error=str(exc))  # fmt: skip
                    self._waiting.clear()
                    BACKLOG.set(0)
                    self._closed = True
                    return
                await wait_any(stop, timeout=backoff.next())
                continue
            for _ in batch:
                self._waiting.popleft()
            BACKLOG.set(len(self._waiting))
            backoff.reset()
            log.info("tracking events stored after waiting", count=len(batch))


_NAMES: dict[LinkKind, str] = {
    "open": "Email Opened",
    "click": "Email Link Clicked",
    "unsubscribe": "Unsubscribed",
}


class EmailLinks:
    def __init__(self, ingestor: Ingestor, pool: asyncpg.Pool, settings: Settings) -> None:
        self._ingestor = ingestor
        self._pool = pool
        self._keys = TrackingKeys(settings.tracking_secrets)
        self._partitions = settings.partitions
        self._fallback = settings.tracking_fallback_url
        self.backlog = HitBacklog(ingestor, settings.tracking_backlog_limit)
        unsubscribe = settings.tracking_unsubscribe_ttl_days
        self._ttl: dict[LinkKind, float | None] = {
            "open": settings.tracking_link_ttl_days * DAY,
            "click": settings.tracking_link_ttl_days * DAY,
            "unsubscribe": unsubscribe * DAY if unsubscribe else None,
        }

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/t/o/{token}", self.opened)
        router.add_get("/t/c/{token}", self.clicked)
        router.add_get("/t/u/{token}", self.unsubscribe_page)
        router.add_post("/t/u/{token}", self.unsubscribe)

    def _open(self, kind: LinkKind, token: str) -> LinkPayload:
        """The token's payload; a plain 410 (expired) or 404 (not genuine), or a redirect to
        the fallback URL, otherwise (the pixel: ``_Refused``, answered with the GIF)."""
        try:
            return self._keys.open(kind, token, ttl=self._ttl[kind])
        except InvalidToken as exc:
            expired = isinstance(exc, ExpiredToken)
            HITS.labels(kind, "expired" if expired else "refused").inc()
            if kind == "open":
                raise _Refused(410 if expired else 404) from None
            if self._fallback:
                raise web.HTTPFound(self._fallback, headers=NO_STORE) from None
            if expired:
                raise web.HTTPGone(text="this link has expired") from None
            raise web.HTTPNotFound(text="unknown or forged tracking link") from None

    async def opened(self, request: web.Request) -> web.Response:
        token = request.match_info["token"].removesuffix(".gif")
        try:
            payload = self._open("open", token)
        except _Refused as refused:  # still an image: a broken-image icon helps nobody
            return web.Response(
                body=PIXEL, status=refused.status, content_type="image/gif", headers=NO_STORE
            )
        await self._enter("open", payload, request)
        return web.Response(body=PIXEL, content_type="image/gif", headers=NO_STORE)

    async def clicked(self, request: web.Request) -> web.Response:
        payload = self._open("click", request.match_info["token"])
        url = payload.url or ""
        if urlsplit(url).scheme.lower() not in ("http", "https", "mailto", "tel"):
            raise web.HTTPBadRequest(text="the link's target is not a web address")
        await self._enter("click", payload, request, url=url)
        raise web.HTTPFound(url, headers=NO_STORE)

    async def unsubscribe_page(self, request: web.Request) -> web.Response:
        self._open("unsubscribe", request.match_info["token"])
        page = (
            "<!doctype html><meta charset=utf-8><title>Unsubscribe</title>"
            "<p>Stop receiving these emails?</p>"
            f'<form method=post action="{html.escape(request.path)}">'
            "<button type=submit>Unsubscribe</button></form>"
        )
        return web.Response(text=page, content_type="text/html", headers=NO_STORE)

    async def unsubscribe(self, request: web.Request) -> web.Response:
        payload = self._open("unsubscribe", request.match_info["token"])
        m = payload.message
        try:
            await repo.suppress(self._pool, m.profile_id, m.channel, m.address, "unsubscribed")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("unsubscribe not stored", error=str(exc))
            raise web.HTTPServiceUnavailable(text="please try again in a moment") from exc
        await self._enter("unsubscribe", payload, request)
        page = (
            "<!doctype html><meta charset=utf-8><title>Unsubscribed</title>"
            "<p>You are unsubscribed.</p>"
        )
        return web.Response(text=page, content_type="text/html", headers=NO_STORE)

    async def _enter(
        self, kind: LinkKind, payload: LinkPayload, request: web.Request, **extra: Any
    ) -> None:
        m = payload.message
        received = now()
        context: dict[str, Any] = {"ip": request.remote or ""}
        if agent := request.headers.get("User-Agent"):
            context["userAgent"] = agent
        event = Event(
            message_id=hit_id(kind, payload),
            type="track",
            event=_NAMES[kind],
            profile_id=m.profile_id,
            user_id=m.profile_id,
            partition=partition_for(m.profile_id, self._partitions),
            received_at=received,
            timestamp=received,
            properties={
                "delivery_id": m.delivery_id,
                "instance_id": m.instance_id,
                "journey": m.journey,
                "step_id": m.step_id,
                "channel": m.channel,
                **extra,
            },
            context=context,
            source="tracking",
        )
        try:
            duplicates = await self._ingestor.internal([event])
            HITS.labels(kind, "replay" if duplicates else "first").inc()
        except Unavailable as exc:
            log.warning("tracking event waits for JetStream", kind=kind,
                        delivery_id=m.delivery_id, error=str(exc))  # fmt: skip
            self.backlog.add(event)


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status
