"""NATS refuses anonymous clients, and each user may do only its own part (issue 11, item 1).

The issue's case: a client with no credentials published a ``DeliveryRequested`` to
``cairn.deliveries.email`` and the dispatcher emailed an arbitrary address; the same client could
inject events for any profile or delete the streams. Here a NATS server of the module's own runs
with the users ``cairn_common.nats_auth`` derives from the topology, and the four services run on
it with their own credentials, as ``cairn up`` and ``deploy/k8s`` run them. Every attack is made
through that real server, and the shop's own journey still sends its emails, timer included.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.errors import NoServersError
from nats.js.client import JetStreamContext

from cairn_cli.local import LocalNats
from cairn_common import nats_auth
from cairn_common.topology import Topology
from tests.conftest import STREAM_LIMITS
from tests.dispatcher.support import SmtpSink, apply, delivery, eventually
from tests.observability.support import start_system
from tests.support.engine import prepared, publish_journey
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.e2e

NAMESPACE = f"auth{uuid.uuid4().hex[:8]}"
NEIGHBOUR = f"{NAMESPACE}x"
"""Another Cairn on the same server: its users must not reach this one's streams."""

JOURNEY = {
    "kind": "Journey",
    "name": "least-privilege",
    "trigger": {"event": "Cart Abandoned"},
    "steps": [
        {"id": "first", "send": {"channel": "email", "template": "hi", "to": "profile.email"}},
        {"id": "pause", "wait": "1s"},
        {"id": "second", "send": {"channel": "email", "template": "hi", "to": "profile.email"}},
    ],
}


@pytest.fixture(scope="module")
def passwords() -> dict[str, dict[str, str]]:
    return {ns: nats_auth.new_passwords() for ns in (NAMESPACE, NEIGHBOUR)}


@pytest.fixture(scope="module")
def auth_nats(
    tmp_path_factory: pytest.TempPathFactory, passwords: dict[str, dict[str, str]]
) -> Iterator[LocalNats]:
    root = tmp_path_factory.mktemp("auth-nats")
    users = [
        entry
        for ns, pw in passwords.items()
        for entry in nats_auth.users(Topology(ns, **STREAM_LIMITS), pw)
    ]
    server = LocalNats(root / "nats", users=users)
    server.start(log_file=root / "nats.log")
    yield server
    server.stop()


@pytest.fixture
def namespace() -> str:
    return NAMESPACE


@pytest.fixture
def service_env(auth_nats: LocalNats, database_url: str) -> dict[str, str]:
    return {
        "CAIRN_NATS_URL": auth_nats.url,
        "CAIRN_DATABASE_URL": database_url,
        "CAIRN_NAMESPACE": NAMESPACE,
        "CAIRN_SHUTDOWN_GRACE_SECONDS": "10",
        **{f"CAIRN_{name.upper()}": str(value) for name, value in STREAM_LIMITS.items()},
    }


class Client:
    """A NATS connection as one user, recording the server's permission refusals."""

    def __init__(self, nc: NATS, refusals: list[str]) -> None:
        self.nc = nc
        self.refusals = refusals

    @classmethod
    async def as_user(
        cls, server: LocalNats, passwords: dict[str, dict[str, str]], ns: str, role: str
    ) -> Client:
        refusals: list[str] = []

        async def on_error(exc: Exception) -> None:
            refusals.append(str(exc))

        nc = await nats.connect(
            server.url,
            user=nats_auth.user_name(ns, role),
            password=passwords[ns][role],
            # A producer's replies arrive where any NATS client's do; a service's on its own.
            inbox_prefix="_INBOX" if role == "client" else nats_auth.inbox_prefix(ns, role),
            error_cb=on_error,
            max_reconnect_attempts=0,
        )
        return cls(nc, refusals)

    async def refused(self, subject: str, payload: bytes = b"{}") -> None:
        """Publishing to ``subject`` is refused by the server: nothing is delivered, and the
        server says why."""
        before = len(self.refusals)
        with pytest.raises((TimeoutError, nats.errors.NoRespondersError, nats.errors.Error)):
            await self.nc.request(subject, payload, timeout=1)
        await eventually(lambda: len(self.refusals) > before, timeout=5)
        assert "permissions violation" in self.refusals[-1].lower(), self.refusals[-1]
        assert subject.lower() in self.refusals[-1].lower()


@pytest.fixture
async def js(
    auth_nats: LocalNats, passwords: dict[str, dict[str, str]]
) -> AsyncIterator[JetStreamContext]:
    setup = await Client.as_user(auth_nats, passwords, NAMESPACE, "setup")
    yield setup.nc.jetstream()
    await setup.nc.close()


async def test_only_each_services_own_traffic_is_allowed(
    auth_nats: LocalNats,
    passwords: dict[str, dict[str, str]],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
    spawn: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    smtp = SmtpSink().start()
    try:
        pool = await prepared(database_url, js, topology)
        async with pool.acquire() as db:
            await apply(db, "Channel", "email", {
                "provider": "smtp", "endpoint": f"smtp://127.0.0.1:{smtp.port}",
                "options": {"starttls": False, "from": "Shop <shop@example.test>"},
            })  # fmt: skip
            await apply(db, "Template", "hi", {"channel": "email", "subject": "Hi", "text": "hi"})
        await publish_journey(pool, JOURNEY)
        credentials = {
            role: {
                "CAIRN_NATS_USER": nats_auth.user_name(NAMESPACE, role),
                "CAIRN_NATS_PASSWORD": passwords[NAMESPACE][role],
            }
            for role in nats_auth.SERVICES
        }
        system = await start_system(spawn, pool, env_of=credentials)

        # No credentials, or wrong ones: the server does not let the client in at all.
        for user, password in ((None, None), (nats_auth.user_name(NAMESPACE, "client"), "guess")):
            with pytest.raises((NoServersError, nats.errors.Error, OSError, TimeoutError)):
                await nats.connect(
                    auth_nats.url,
                    user=user,
                    password=password,
                    max_reconnect_attempts=0,
                    allow_reconnect=False,
                    connect_timeout=2,
                )

        ns = NAMESPACE
        evil = delivery("evil", channel="email", template="hi", address="victim@example.test")
        evil_bytes = msgspec.json.encode(evil)
        inputs, deliveries = topology.inputs_stream, topology.deliveries_stream

        # A NATS ingestion client: may send events through ingest (write key checked) only.
        client = await Client.as_user(auth_nats, passwords, ns, "client")
        reply = await client.nc.request(
            f"{ns}.ingest.identify",
            json.dumps({
                "writeKey": system.write_key, "userId": "ann",
                "traits": {"email": "ann@example.test"},
            }).encode(),
            timeout=10,
        )  # fmt: skip
        assert json.loads(reply.data) == {"success": True}
        await client.refused(f"{ns}.deliveries.email", evil_bytes)
        await client.refused(f"{ns}.inputs.0.event")
        await client.refused(f"$JS.API.STREAM.DELETE.{inputs}")
        await client.refused(f"$JS.API.STREAM.PURGE.{deliveries}")
        await client.refused("$JS.API.STREAM.LIST")

        # A service's credentials, stolen: each may do its part and nothing else.
        dispatcher = await Client.as_user(auth_nats, passwords, ns, "dispatcher")
        await dispatcher.refused(f"{ns}.inputs.0.event")  # no injected events
        await dispatcher.refused(f"{ns}.deliveries.email", evil_bytes)
        await dispatcher.refused(f"$JS.API.STREAM.DELETE.{deliveries}")
        await dispatcher.refused(f"$JS.API.STREAM.PURGE.{inputs}")
        matcher = await Client.as_user(auth_nats, passwords, ns, "matcher")
        await matcher.refused(f"$JS.API.STREAM.DELETE.{inputs}")
        await matcher.refused(f"{ns}.inputs.0.event")
        scheduler = await Client.as_user(auth_nats, passwords, ns, "scheduler")
        await scheduler.refused(f"{ns}.deliveries.email", evil_bytes)
        await scheduler.refused(f"{ns}.inputs.0.result")

        # Another Cairn's setup user on the same server cannot reach this one's streams, nor read
        # this one's replies.
        neighbour = await Client.as_user(auth_nats, passwords, NEIGHBOUR, "setup")
        await neighbour.refused(f"$JS.API.STREAM.DELETE.{inputs}")
        await neighbour.refused(f"{ns}.deliveries.email", evil_bytes)
        before = len(neighbour.refusals)
        await neighbour.nc.subscribe(f"{nats_auth.inbox_prefix(ns, 'ingest')}.>")
        await neighbour.nc.flush()
        await eventually(lambda: len(neighbour.refusals) > before, timeout=5)
        assert "permissions violation for subscription" in neighbour.refusals[-1].lower()

        # The shop's own traffic flows through all four services: the event through ingest, the
        # first email, the timer from the scheduler, the second email; the attacker's never.
        await system.post("/v1/track", {"userId": "ann", "event": "Cart Abandoned"})
        await eventually(lambda: len(smtp.messages) == 2, timeout=30)
        assert [rcpts for _, rcpts, _ in smtp.messages] == [["ann@example.test"]] * 2
        await asyncio.sleep(0.5)
        assert len(smtp.messages) == 2
        for name in (inputs, deliveries, topology.dead_letter_stream):
            await js.stream_info(name)  # every stream is still there
        for c in (client, dispatcher, matcher, scheduler, neighbour):
            await c.nc.close()
        await pool.close()
    finally:
        smtp.stop()
