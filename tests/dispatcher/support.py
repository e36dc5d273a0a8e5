"""Local real-protocol servers and helpers for the dispatcher tests."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import asyncpg
import msgspec
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from cairn_cli.local import free_port
from cairn_common.bus import publish
from cairn_common.db import migrate
from cairn_common.messages import DeliveryRequested, DeliveryResult, decode
from cairn_common.topology import Topology


class Recorded(msgspec.Struct):
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    query: dict[str, str]
    raw_path: str = ""
    """The path as sent, percent-encoding kept (``path`` is decoded)."""
    at: datetime = msgspec.field(default_factory=lambda: datetime.now(UTC))
    """When the sink received it."""

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        from urllib.parse import parse_qsl

        return dict(parse_qsl(self.body.decode()))


class Reply(msgspec.Struct):
    status: int = 200
    body: Any = msgspec.field(default_factory=dict)
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    stall: bool = False
    """Never answer (the client times out)."""


class HttpSink:
    """An HTTP server that records every request and answers from a script (then ``default``)."""

    def __init__(self, default: Reply | None = None) -> None:
        self.requests: list[Recorded] = []
        self.script: deque[Reply] = deque()
        self.default = default or Reply()
        self.routes: dict[str, Reply] = {}
        self._stopping = asyncio.Event()
        self.hold: asyncio.Event | None = None
        """When set to an Event, requests are recorded but answered only once it is set."""
        self.arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            Recorded(
                method=request.method,
                path=request.path,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
                query=dict(request.query),
                raw_path=request.raw_path.split("?", 1)[0],
            )
        )
        self.arrived.set()
        if self.hold is not None:
            await self.hold.wait()
        if request.path in self.routes:
            reply = self.routes[request.path]
        else:
            reply = self.script.popleft() if self.script else self.default
        if reply.stall:
            await self._stopping.wait()
        text = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
        return web.Response(status=reply.status, text=text, headers=reply.headers)

    async def start(self) -> HttpSink:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        self._stopping.set()
        if self.hold is not None:
            self.hold.set()
        if self._runner is not None:
            await self._runner.cleanup()


class SmtpSink:
    """An aiosmtpd server recording every accepted message; ``refuse`` rejects recipients."""

    def __init__(self, **server: Any) -> None:
        """``server``: aiosmtpd SMTP options (tls_context, require_starttls, authenticator...)."""
        self.messages: list[tuple[str, list[str], EmailMessage]] = []
        self.refuse: set[str] = set()
        self.logins: list[str] = []
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, **server)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        msg = message_from_bytes(content, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append((str(envelope.mail_from), list(envelope.rcpt_tos), msg))
        if session.authenticated:
            self.logins.append(str(session.auth_data.login.decode()))
        return "250 Message accepted"

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


async def prepare_database(database_url: str) -> asyncpg.Connection:
    await migrate(database_url)
    return await asyncpg.connect(database_url)


async def apply(db: asyncpg.Connection, kind: str, name: str, document: dict[str, Any]) -> None:
    await db.execute(
        "INSERT INTO resources (kind, name, document, status) VALUES ($1, $2, $3::jsonb, 'ready')"
        " ON CONFLICT (kind, name) DO UPDATE SET document = EXCLUDED.document",
        kind,
        name,
        json.dumps({"kind": kind, "name": name, **document}),
    )


async def email_channel(
    db: asyncpg.Connection,
    smtp: SmtpSink,
    template: str,
    document: dict[str, Any],
    **options: Any,
) -> None:
    """Channel ``email`` over SMTP to ``smtp`` (no STARTTLS, more ``options`` if given), and
    Template ``template``."""
    await apply(
        db,
        "Channel",
        "email",
        {
            "type": "email",
            "provider": "smtp",
            "endpoint": f"smtp://127.0.0.1:{smtp.port}",
            "options": {"starttls": False, "from": "Shop <shop@example.test>", **options},
        },
    )
    await apply(db, "Template", template, document)


def delivery(
    delivery_id: str,
    *,
    channel: str | None = None,
    destination: str | None = None,
    template: str | None = None,
    address: str | None = None,
    profile: dict[str, Any] | None = None,
    profile_id: str = "user-1",
    instance_id: str = "inst-1",
    event: dict[str, Any] | None = None,
    **extra: Any,
) -> DeliveryRequested:
    return DeliveryRequested(
        delivery_id=delivery_id,
        profile_id=profile_id,
        journey="abandoned-cart",
        version=1,
        instance_id=instance_id,
        step_id="initial-email",
        visit=1,
        requested_at=datetime.now(UTC),
        channel=channel,
        destination=destination,
        template=template,
        address=address,
        profile=profile or {},
        event=event or {"event": "Cart Abandoned", "properties": {"cart_id": "c1", "total": 42}},
        **extra,
    )


async def send_requests(js: JetStreamContext, topology: Topology, *reqs: DeliveryRequested) -> None:
    for req in reqs:
        subject = topology.delivery_subject(req.channel or req.destination or "none")
        await publish(js, subject, req, msg_id=req.delivery_id)


class Results:
    """Collects DeliveryResults published into the inputs stream (core subscription)."""

    def __init__(self) -> None:
        self.items: list[DeliveryResult] = []
        self._changed = asyncio.Event()

    @classmethod
    async def listen(cls, nc: NATS, topology: Topology) -> Results:
        results = cls()

        async def on_msg(msg: Any) -> None:
            message = decode(msg.data)
            if isinstance(message, DeliveryResult):
                results.items.append(message)
                results._changed.set()

        await nc.subscribe(f"{topology.namespace}.inputs.*.result", cb=on_msg)
        return results

    def of(self, delivery_id: str) -> list[DeliveryResult]:
        return [r for r in self.items if r.delivery_id == delivery_id]

    async def wait(self, delivery_id: str, outcome: str, timeout: float = 15) -> DeliveryResult:
        async with asyncio.timeout(timeout):
            while True:
                for r in self.of(delivery_id):
                    if r.outcome == outcome:
                        return r
                self._changed.clear()
                await self._changed.wait()


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if isinstance(result, Awaitable):
                result = await result
            if result:
                return
            await asyncio.sleep(0.05)


async def ledger(db: asyncpg.Connection, delivery_id: str) -> dict[str, Any] | None:
    row = await db.fetchrow("SELECT * FROM delivery_ledger WHERE delivery_id = $1", delivery_id)
    return dict(row) if row is not None else None


def self_signed_tls(directory: Any) -> Any:
    """A server TLS context with a fresh self-signed certificate for 127.0.0.1."""
    import ssl
    from datetime import timedelta
    from ipaddress import IPv4Address

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


LOOPBACK = ["127.0.0.0/8"]
"""``allow_networks`` for channels whose provider is one of these local servers: the egress policy
refuses loopback otherwise (docs/security.md)."""
