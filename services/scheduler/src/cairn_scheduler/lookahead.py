"""Fire every timer on time: claim what comes due within the lookahead, hold it in memory, fire it.

Millions of timers wait in PostgreSQL; only those due within ``lookahead_seconds`` are claimed
(see ``repo.claim_due``) and kept in a heap ordered by due time. The firing loop sleeps until the
earliest is due (or until a newly claimed one is earlier), publishes every due timer as a
``TimerFired`` into its profile's partition with ``Nats-Msg-Id`` = the timer id, and only then
deletes them. So a crash between the publish and the delete fires the timer again, which
JetStream's duplicate window drops and the matcher ignores beyond it (a fire for a timer it no
longer waits on is a no-op): timers fire at least once on the wire and exactly once in effect.

The claim loop runs every ``rescan_seconds`` and at once when the matcher commits a near timer
(``NOTIFY cairn_timers`` with its due time), so a short wait set a moment ago still fires on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import structlog
from nats.js.client import JetStreamContext

from cairn_common.failures import Failure, classify, describe, is_transient
from cairn_common.messages import TimerFired, encode
from cairn_common.publishing import Outgoing, publish_batch
from cairn_common.topology import Topology
from cairn_common.waiting import setter, wait_any
from cairn_scheduler import repo
from cairn_scheduler.metrics import (
    FIRE_LATENESS,
    TIMERS_CANCELLED_BEFORE_FIRE,
    TIMERS_FIRED,
    TIMERS_HELD,
)
from cairn_scheduler.repo import DueTimer
from cairn_scheduler.settings import Settings

log = structlog.get_logger(__name__)

NOTIFY_CHANNEL = "cairn_timers"


class Lookahead:
    def __init__(
        self,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        topology: Topology,
        settings: Settings,
    ) -> None:
        self._pool = pool
        self._js = js
        self._topology = topology
        self._s = settings
        self._heap: list[tuple[datetime, str, DueTimer]] = []
        self._held: set[str] = set()
        self._cursor: datetime | None = None
        """Every timer due up to here was claimed (by some replica) at the last scan."""
        self._last_full = 0.0
        self._full_needed = True
        self._claimed = asyncio.Event()
        """Set when new timers entered the heap, so the firing loop re-reads its earliest."""
        self._scan = asyncio.Event()
        """Set to claim at once: a near timer was committed, or firing made room."""

    @property
    def held(self) -> int:
        return len(self._held)

    async def run(self, stop: asyncio.Event) -> None:
        await self._take_back_own()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._listen(stop), name="listen-timers")
                tg.create_task(self._claim_loop(stop), name="claim-timers")
                tg.create_task(self._fire_loop(stop), name="fire-timers")
        finally:
            await self._release()

    # ---- claiming ------------------------------------------------------------------------------

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._scan.clear()
            try:
                await self.claim()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._full_needed = True
                log.warning("claiming timers failed; will retry", error=describe(exc))
            await wait_any(stop, self._scan, timeout=self._s.rescan_seconds)

    async def claim(self) -> int:
        """Claim every unclaimed timer due within the lookahead, up to ``max_held_timers``.

        A scan that claimed everything due up to its horizon moves the cursor there, and the next
        scan starts after it. A full scan (from the start of time) runs when a timer is committed
        behind the cursor (its NOTIFY says so), when the LISTEN connection (re)starts, and every
        ``full_scan_seconds`` (claims left by a dead replica, a NOTIFY lost)."""
        s = self._s
        now = time.monotonic()
        full = (
            self._full_needed
            or self._cursor is None
            or now - self._last_full >= s.full_scan_seconds
        )
        self._full_needed = False  # a NOTIFY arriving from here on asks for the next one
        after = None if full else self._cursor
        until = datetime.now(UTC) + timedelta(seconds=s.lookahead_seconds)
        total = 0
        complete = False
        while (room := s.max_held_timers - len(self._held)) > 0:
            limit = min(s.claim_batch, room)
            async with self._pool.acquire() as conn:
                timers = await repo.claim_due(
                    conn, s.replica_id, after=after, until=until,
                    grace=s.claim_grace_seconds, limit=limit,
                )  # fmt: skip
            self._hold(timers)
            total += len(timers)
            if len(timers) < limit:
                complete = True
                break
        if not complete:  # memory full: the rest of the window waits, the cursor stays
            self._full_needed = self._full_needed or full
        elif full:
            self._cursor = until
            self._last_full = now
        else:
            self._cursor = until if self._cursor is None else max(self._cursor, until)
        return total

    def _claim_behind_cursor(self, due: datetime | None) -> None:
        """A timer was committed that the next cursor scan would not see: scan in full."""
        if due is None or self._cursor is None or due <= self._cursor:
            self._full_needed = True

    def _hold(self, timers: Sequence[DueTimer]) -> None:
        for t in timers:
            if t.timer_id not in self._held:
                self._held.add(t.timer_id)
                heapq.heappush(self._heap, (t.due_at, t.timer_id, t))
        if timers:
            TIMERS_HELD.set(len(self._held))
            self._claimed.set()

    def _requeue(self, timers: Sequence[DueTimer]) -> None:
        for t in timers:
            heapq.heappush(self._heap, (t.due_at, t.timer_id, t))

    async def _listen(self, stop: asyncio.Event) -> None:
        """LISTEN on a connection of its own; reconnect if it drops (the rescan covers the gap)."""

        def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            try:
                due = datetime.fromisoformat(payload)
            except ValueError:
                due = None
            horizon = datetime.now(UTC) + timedelta(seconds=self._s.lookahead_seconds)
            if due is None or due <= horizon:
                self._claim_behind_cursor(due)
                self._scan.set()

        while not stop.is_set():
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self._s.database_url)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("cannot LISTEN for timers yet", error=describe(exc))
                await wait_any(stop, timeout=1.0)
                continue
            try:
                conn.add_termination_listener(setter(lost))
                await conn.add_listener(NOTIFY_CHANNEL, on_notify)
                self._full_needed = True  # anything committed while we were not listening
                self._scan.set()
                await wait_any(stop, lost)
            finally:
                with contextlib.suppress(Exception):  # closing is best effort; it may be gone
                    await asyncio.wait_for(conn.close(), timeout=2)

    # ---- firing --------------------------------------------------------------------------------

    async def _fire_loop(self, stop: asyncio.Event) -> None:
        """Fire due timers in batches, up to ``fire_concurrency`` batches in flight, so the
        database round trips of one batch overlap the publishes of another."""
        slots = asyncio.Semaphore(self._s.fire_concurrency)
        async with asyncio.TaskGroup() as tg:
            while not stop.is_set():
                self._claimed.clear()
                if not self._heap:
                    await wait_any(stop, self._claimed)
                    continue
                delay = (self._heap[0][0] - datetime.now(UTC)).total_seconds()
                if delay > 0:
                    await wait_any(stop, self._claimed, timeout=delay)
                    continue
                await slots.acquire()
                tg.create_task(self._fire_batch(self._take_due(), slots, stop))

    async def _fire_batch(
        self, due: list[DueTimer], slots: asyncio.Semaphore, stop: asyncio.Event
    ) -> None:
        try:
            await self.fire(due)
        except Exception as exc:
            # A bug crashes the service (Kubernetes restarts it, the claims expire). Anything
            # else is retried: timers are ours, small and well-formed, so a refusal is the
            # stream's (full, not there yet), and it passes.
            if classify(exc) is Failure.BUG:
                raise
            log.warning("firing timers failed; will retry", error=describe(exc), count=len(due))
            self._requeue([msgspec.structs.replace(t, refused=True) for t in due])
            self._claimed.set()
            await wait_any(stop, timeout=0.5)
        finally:
            slots.release()

    def _take_due(self) -> list[DueTimer]:
        now = datetime.now(UTC)
        due: list[DueTimer] = []
        while self._heap and self._heap[0][0] <= now and len(due) < self._s.fire_batch:
            due.append(heapq.heappop(self._heap)[2])
        return due

    async def fire(self, timers: Sequence[DueTimer]) -> None:
        """Publish each timer that still exists, then delete them all. One pooled connection for
        the whole batch: asyncpg resets a connection on every release, which costs as much as a
        query."""
        ids = [t.timer_id for t in timers]
        async with self._pool.acquire() as conn:
            alive = await repo.still_set(conn, ids)
            fired_at = datetime.now(UTC)
            outgoing = [self._message(t, fired_at) for t in timers if t.timer_id in alive]
            await publish_batch(self._js, outgoing)
            await repo.delete_fired(conn, ids)
        was_full = len(self._held) >= self._s.max_held_timers
        self._held.difference_update(ids)
        TIMERS_HELD.set(len(self._held))
        TIMERS_FIRED.inc(len(outgoing))
        TIMERS_CANCELLED_BEFORE_FIRE.inc(len(timers) - len(outgoing))
        for t in timers:
            if t.timer_id in alive:
                FIRE_LATENESS.observe(max(0.0, (fired_at - t.due_at).total_seconds()))
        if was_full:
            self._scan.set()

    def _message(self, t: DueTimer, fired_at: datetime) -> Outgoing:
        fired = TimerFired(
            timer_id=t.timer_id,
            profile_id=t.profile_id,
            partition=t.partition,
            instance_id=t.instance_id,
            step_id=t.step_id,
            due_at=t.due_at,
            fired_at=fired_at,
            kind=t.kind,
            after_outage=t.refused,
        )
        subject = self._topology.input_subject(t.partition, "timer")
        # A fire starts a trace of its own (the wait may have lasted days) that links to the
        # trace of the input that set the timer.
        return Outgoing(subject, encode(fired), t.timer_id, link=t.traceparent)

    async def _take_back_own(self) -> None:
        """Claims under this replica's name at start belong to a process of the same name that is
        gone (a restarted container keeps its pod name; ``cairn up`` names its scheduler): hand
        them back, so their timers fire now instead of ``claim_grace_seconds`` late."""
        await self._release_claims("took back the timer claims of this replica's previous process")

    async def _release(self) -> None:
        if self._held:
            await self._release_claims("released unfired timer claims")

    async def _release_claims(self, done: str) -> None:
        """Hand back every claim under this replica's name; if the database is away, they expire
        by themselves."""
        try:
            async with self._pool.acquire() as conn:
                released = await repo.release_claims(conn, self._s.replica_id)
            if released:
                log.info(done, count=released)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("could not release timer claims; they expire by themselves",
                        error=describe(exc))  # fmt: skip
