"""The providers and the customers of the end-to-end bench, in one process of their own.

- a real SMTP server (aiosmtpd) where every email arrives;
- Twilio's Messages API and FCM's HTTP v1 ``messages:send``, as the providers answer them;
- the customers: when a cart's email arrives, its shopper (workload.cart) opens it 1 s later
  by loading the open pixel from the tracking API, or completes the order 2 s later through the
  Segment HTTP API, or does nothing. They react to what arrived, as people react to real email, so
  the expected sends are exact whatever the latency.

Every arrival is kept as (channel, cart id, arrival time, delivery id). ``GET /progress`` counts
them; ``GET /arrivals`` returns them all, for the report.

    python bench/e2e/customers.py --smtp-port P --http-port Q --tracking-url URL --write-key K
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import quopri
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import OPEN_AFTER, ORDER_AFTER, cart, parse_cart_id

_CART = re.compile(rb"cart (c-[A-Za-z0-9]+-[0-9]+)")
_PIXEL = re.compile(rb'src="(http[^"]+/t/o/[^"]+)"')
_BASE64_PART = re.compile(
    rb"Content-Transfer-Encoding: base64\r\n(?:[^\r\n]+\r\n)*\r\n([A-Za-z0-9+/=\r\n]+)",
    re.IGNORECASE,
)
_DELIVERY = re.compile(rb"X-Cairn-Delivery-Id: *([^\r\n]+)", re.IGNORECASE)
DELIVERY_ID = "X-Cairn-Delivery-Id"
"""The header every Cairn send carries its delivery id (idempotency key) in, SMS included."""


class Arrival(msgspec.Struct, array_like=True):
    channel: str
    cart_id: str
    at: float
    delivery_id: str


class Customers:
    def __init__(self, seed: int, tracking_url: str, write_key: str) -> None:
        self.seed = seed
        self.tracking_url = tracking_url.rstrip("/")
        self.auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
        self.arrivals: list[Arrival] = []
        self.reactions: dict[str, int] = {"open": 0, "order": 0, "failed": 0}
        self.seen_email: set[str] = set()
        self.accepted: dict[str, float] = {}
        """cart id -> when Cairn answered 200 to the customer's open or order (after retries)."""
        self.http: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def arrived(self, channel: str, cart_id: str, delivery_id: str) -> None:
        self.arrivals.append(Arrival(channel, cart_id, time.time(), delivery_id))

    def email(self, cart_id: str, delivery_id: str, pixel: str | None) -> None:
        self.arrived("email", cart_id, delivery_id)
        if cart_id in self.seen_email:
            return  # a duplicate: the customer already reacted to the first
        self.seen_email.add(cart_id)
        run, index = parse_cart_id(cart_id)
        shopper = cart(self.seed, run, index)
        if shopper.reaction == "open" and pixel:
            self._later(OPEN_AFTER, self._open(pixel, cart_id))
        elif shopper.reaction == "order":
            self._later(ORDER_AFTER, self._order(shopper.order()))

    def _later(self, delay: float, action: Any) -> None:
        async def run() -> None:
            await asyncio.sleep(delay)
            await action

        task = asyncio.get_running_loop().create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _open(self, url: str, cart_id: str) -> None:
        assert self.http is not None
        http = self.http
        await self._call("open", lambda: http.get(url), cart_id)

    async def _order(self, event: dict[str, Any]) -> None:
        assert self.http is not None
        http, url = self.http, f"{self.tracking_url}/v1/track"
        headers = {"Authorization": self.auth}
        cart_id = str(event["properties"]["cart_id"])
        await self._call("order", lambda: http.post(url, json=event, headers=headers), cart_id)

    async def _call(self, kind: str, request: Callable[[], Any], cart_id: str) -> None:
        """A customer tries again while ingest restarts (the fault run), for up to ~20 s."""
        for attempt in range(25):
            try:
                async with request() as resp:
                    await resp.read()
                    if resp.status == 200:
                        self.reactions[kind] += 1
                        self.accepted[cart_id] = time.time()
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
        self.reactions["failed"] += 1


class _Mail:
    def __init__(self, customers: Customers) -> None:
        self.customers = customers

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Read just what a customer needs, without parsing the MIME tree (the sink shares the
        machine's two cores with Cairn): the cart from the subject, the delivery id, and the
        open pixel from the quoted-printable body."""
        raw = envelope.content if isinstance(envelope.content, bytes) else b""
        head, _, body = raw.partition(b"\r\n\r\n")
        found = _CART.search(head)
        if found is None:
            return "250 OK (not a bench email)"
        delivery = _DELIVERY.search(head)
        pixel = _PIXEL.search(quopri.decodestring(body))
        if pixel is None:  # a base64 part
            for part in _BASE64_PART.findall(body):
                if pixel := _PIXEL.search(base64.b64decode(b"".join(part.split()))):
                    break
        self.customers.email(
            found[1].decode(),
            delivery[1].decode() if delivery else "",
            pixel[1].decode().replace("&amp;", "&") if pixel else None,
        )
        return "250 Message accepted for delivery"


def http_app(customers: Customers) -> web.Application:
    async def twilio(request: web.Request) -> web.Response:
        form = await request.post()
        found = _CART.search(str(form.get("Body", "")).encode())
        if found:
            customers.arrived("sms", found[1].decode(), request.headers.get(DELIVERY_ID, ""))
        n = len(customers.arrivals)
        return web.json_response({"sid": f"SM{n:032x}", "status": "queued"}, status=201)

    async def fcm(request: web.Request) -> web.Response:
        message = (await request.json())["message"]
        data = message.get("data") or {}
        if "cart_id" in data:
            customers.arrived("push", str(data["cart_id"]), str(data.get("delivery_id", "")))
        name = f"projects/{request.match_info['project']}/messages/{len(customers.arrivals)}"
        return web.json_response({"name": name})

    async def progress(_: web.Request) -> web.Response:
        counts: dict[str, int] = {}
        for a in customers.arrivals:
            counts[a.channel] = counts.get(a.channel, 0) + 1
        return web.json_response({"arrivals": counts, "reactions": customers.reactions,
                                  "pending_reactions": len(customers.tasks)})  # fmt: skip

    async def arrivals(_: web.Request) -> web.Response:
        return web.Response(
            body=msgspec.json.encode(customers.arrivals), content_type="application/json"
        )

    async def reactions(_: web.Request) -> web.Response:
        return web.json_response(customers.accepted)

    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", twilio)
    app.router.add_post("/v1/projects/{project}/messages:send", fcm)
    app.router.add_get("/progress", progress)
    app.router.add_get("/arrivals", arrivals)
    app.router.add_get("/reactions", reactions)
    return app


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--tracking-url", required=True)
    parser.add_argument("--write-key", required=True)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    customers = Customers(args.seed, args.tracking_url, args.write_key)
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=10)
    ) as http:
        customers.http = http
        loop = asyncio.get_running_loop()
        smtp = await loop.create_server(
            lambda: SMTP(_Mail(customers), hostname="sink.bench"), "127.0.0.1", args.smtp_port
        )
        runner = web.AppRunner(http_app(customers), access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.http_port).start()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print("ready", flush=True)
        await stop.wait()
        smtp.close()
        await runner.cleanup()
        for task in customers.tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*customers.tasks, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
