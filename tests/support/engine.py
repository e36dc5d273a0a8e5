"""Helpers for matcher and scheduler tests: publish journeys the way the control plane does, send
profile inputs the way ingest does, and record delivery requests the way the dispatcher takes
them."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import msgspec
from nats.errors import ConnectionClosedError
from nats.js.client import JetStreamContext

from cairn_common.bus import provision_topology, publish
from cairn_common.db import apply_migrations
from cairn_common.messages import (
    DeadLetter,
    DeliveryOutcome,
    DeliveryRequested,
    DeliveryResult,
    Event,
    EventType,
    decode,
)
from cairn_common.partitioning import partition_for
from cairn_common.topology import Topology

# Email on "Cart Abandoned", then hold the instance a day: one send per trigger, easy to count.
CART_EMAIL: Mapping[str, Any] = {
    "kind": "Journey",
    "name": "cart",
    "trigger": {"event": "Cart Abandoned"},
    "steps": [
        {"id": "email", "send": {"channel": "email", "template": "t", "to": "profile.email"}},
        {"id": "after", "wait": "1d"},
    ],
}


async def prepared(database_url: str, js: JetStreamContext, topology: Topology) -> asyncpg.Pool:
    """Migrated database and provisioned streams, as a service start would leave them."""
    await provision_topology(js, topology)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await apply_migrations(conn)
    return pool


async def publish_journey(
    pool: asyncpg.Pool, document: Mapping[str, Any], *, version: int = 1, live: bool = True
) -> None:
    """Store a published version and make it live, then NOTIFY the matchers."""
    name = document["name"]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO journeys (name, state, live_version) VALUES ($1, $2, $3) "
            "ON CONFLICT (name) DO UPDATE SET state = $2, live_version = $3, updated_at = now()",
            name, "live" if live else "stopped", version,
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO journey_versions (journey, version, definition, checksum) "
            "VALUES ($1, $2, $3::jsonb, $4)",
            name, version, msgspec.json.encode(document).decode(), uuid.uuid4().hex,
        )  # fmt: skip
        await conn.execute("SELECT pg_notify('cairn_journeys', $1)", name)


async def stop_journey(pool: asyncpg.Pool, name: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE journeys SET state = 'stopped', stop_mode = 'drain', stopped_at = now() "
            "WHERE name = $1",
            name,
        )
        await conn.execute("SELECT pg_notify('cairn_journeys', $1)", name)


class Inputs:
    """Sends events into the inputs stream as ingest does (partition by profile, msg id)."""

    def __init__(self, js: JetStreamContext, topology: Topology, partitions: int) -> None:
        self._js = js
        self._topology = topology
        self._partitions = partitions
        self.sent = 0

    async def send(
        self,
        profile_id: str,
        event: str | None = None,
        *,
        type: EventType = "track",
        properties: dict[str, Any] | None = None,
        traits: dict[str, Any] | None = None,
        message_id: str | None = None,
    ) -> Event:
        now = datetime.now(UTC)
        partition = partition_for(profile_id, self._partitions)
        ev = Event(
            message_id=message_id or uuid.uuid4().hex,
            type=type,
            profile_id=profile_id,
            user_id=profile_id,
            partition=partition,
            received_at=now,
            timestamp=now,
            event=event if type == "track" else None,
            name=event if type in ("page", "screen") else None,  # a page's or screen's name
            properties=properties or {},
            traits=traits or {},
        )
        subject = self._topology.input_subject(partition, "event")
        await publish(self._js, subject, ev, msg_id=ev.message_id)
        self.sent += 1
        return ev

    async def identify(self, profile_id: str, **traits: Any) -> Event:
        return await self.send(profile_id, type="identify", traits=traits)


class Deliveries:
    """Stands in for the dispatcher: takes delivery requests from its durable consumer, keeps
    them all (duplicates included: a request emitted twice would show up twice) and, as a
    dispatcher with no backlog would, reports each one ``sent`` into the profile's partition
    (journeys move past a send only when its outcome is known). ``report=False`` keeps the
    outcomes back; :meth:`report` sends one by hand."""

    def __init__(
        self,
        js: JetStreamContext,
        topology: Topology,
        partitions: int,
        *,
        report: bool = True,
    ) -> None:
        self._js = js
        self._topology = topology
        self._partitions = partitions
        self._report = report
        self.seen: list[DeliveryRequested] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> Deliveries:
        self._sub = await self._js.pull_subscribe_bind(
            durable=self._topology.dispatcher_consumer, stream=self._topology.deliveries_stream
        )
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        """Stop taking requests. The flag as well as the cancel: nats-py's ``fetch`` can turn a
        cancellation into the ``TimeoutError`` the loop waits out, which hung a teardown."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while not self._stopping:
            try:
                msgs = await self._sub.fetch(500, timeout=0.2)
            except TimeoutError:
                continue
            except ConnectionClosedError:
                return  # the test is over (its connection closed): nothing more to take
            for m in msgs:
                request = decode(m.data)
                assert isinstance(request, DeliveryRequested)
                self.seen.append(request)
                if self._report:
                    await self.report(request)
                await m.ack()
            self._arrived.set()

    async def report(
        self, request: DeliveryRequested, outcome: DeliveryOutcome = "sent", **extra: Any
    ) -> DeliveryResult:
        partition = partition_for(request.profile_id, self._partitions)
        result = DeliveryResult(
            delivery_id=request.delivery_id,
            profile_id=request.profile_id,
            partition=partition,
            instance_id=request.instance_id,
            step_id=request.step_id,
            outcome=outcome,
            at=extra.pop("at", None) or datetime.now(UTC),
            channel=request.channel,
            destination=request.destination,
            **extra,
        )
        await publish(
            self._js,
            self._topology.input_subject(partition, "result"),
            result,
            msg_id=f"result:{request.delivery_id}:{outcome}",
        )
        return result

    async def _next(self, wait: float) -> None:
        self._arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), timeout=wait)

    async def until(self, count: int, timeout: float = 60.0) -> list[DeliveryRequested]:
        async with asyncio.timeout(timeout):
            while len(self.seen) < count:
                await self._next(0.2)
        return self.seen

    async def settle(self, quiet: float = 1.5) -> list[DeliveryRequested]:
        """Wait until nothing new arrives for ``quiet`` seconds."""
        while True:
            before = len(self.seen)
            await asyncio.sleep(quiet)
            if len(self.seen) == before:
                return self.seen

    def steps(self, profile_id: str) -> list[str]:
        return [d.step_id for d in self.seen if d.profile_id == profile_id]


async def wait_for_rows(
    pool: asyncpg.Pool, query: str, *args: Any, expect: int, timeout: float = 30.0
) -> None:
    """Poll ``query`` (a count) until it returns ``expect``."""
    async with asyncio.timeout(timeout):
        while await pool.fetchval(query, *args) != expect:
            await asyncio.sleep(0.1)


async def metric(url: str, name: str) -> float:
    """Sum of a Prometheus metric's samples on a service's /metrics."""
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name) and (line[len(name)] in " {")
    )


async def dead_letters(js: JetStreamContext, topology: Topology, stream: str) -> list[DeadLetter]:
    """Every dead letter of ``stream`` so far, oldest first."""
    subject = topology.dead_letter_subject(stream)
    sub = await js.subscribe(subject, stream=topology.dead_letter_stream, ordered_consumer=True)
    letters: list[DeadLetter] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=1.0)
            letter = decode(msg.data)
            assert isinstance(letter, DeadLetter)
            letters.append(letter)
    except TimeoutError:
        return letters
    finally:
        await sub.unsubscribe()
