"""Applies the partitions' fetched batches: the actors, the interpreter, and group commit.

Inputs are applied one at a time in stream order (so per profile in arrival order); each profile's
state is its actor, held in a bounded LRU cache and loaded from PostgreSQL on a miss. Everything
the batches waiting at one moment change — profile states, traits, timers, outbox messages,
instances, analytics counters, and each partition's last applied stream sequence — is written in
ONE transaction, fenced by each partition's lease. An input at or below the last applied sequence
was applied already and is skipped, so effects happen exactly once over at-least-once delivery.

A poison input never blocks its partition (``cairn_common.failures``). An input the interpreter
cannot handle (it raised) is dead-lettered with the reason in the same transaction, leaves its
profile's state as it was, and the batch goes on. An input whose writes PostgreSQL refuses for good
(a NUL in a trait, traits over their budget, a value too large) fails the whole transaction; the
engine then commits the group's batches one by one, and a batch that still fails one input at a
time, in stream order, so the input that fails alone is found, dead-lettered with the reason (and
its sequence recorded as applied, so it is never taken again), and every other input is committed.
A transient failure (a connection lost, a deadlock) fails the group's batches instead: their
partitions retry them with backoff, in order.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import asyncpg
import msgspec
import structlog
from prometheus_client import Counter, Gauge, Histogram

from cairn_common.bus import MSG_ID
from cairn_common.failures import Failure, classify, describe
from cairn_common.messages import (
    DeadLetter,
    DeliveryResult,
    Event,
    ExitInstances,
    Message,
    TimerFired,
)
from cairn_common.observability import consumer_span, tracing_enabled
from cairn_common.publishing import current_traceparent
from cairn_common.topology import Topology
from cairn_common.waiting import wait_any
from cairn_journey.catalogue import Catalogue
from cairn_journey.effects import SendRequested
from cairn_journey.interpreter import run_input
from cairn_journey.state import ProfileState, decode_state
from cairn_matcher import repo
from cairn_matcher.effects import BatchWrites
from cairn_matcher.journeys import JourneyCatalogue
from cairn_matcher.leases import LeaseLost, PartitionLeases
from cairn_matcher.outbox import Outbox, OutboxMessage

log = structlog.get_logger(__name__)

INPUTS = Counter("cairn_matcher_inputs_total", "Profile inputs taken", ["kind", "outcome"])
BATCH_SECONDS = Histogram("cairn_matcher_batch_seconds", "Time to apply and commit one batch")
GROUP_SIZE = Histogram(
    "cairn_matcher_commit_inputs",
    "Inputs applied per transaction (group commit across partitions)",
    buckets=(1, 4, 16, 64, 256, 1024, 4096),
)
CACHED = Gauge("cairn_matcher_cached_profiles", "Profile actors held in memory")
EVENT_TO_DELIVERY = Histogram(
    "cairn_matcher_event_to_delivery_request_seconds",
    "From an event's arrival at ingest (received_at) to the commit of the delivery request it"
    " caused",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

Clock = Callable[[], datetime]
SHARDS = 32_768
"""Analytics counter shards (``journey_stats.shard`` is a smallint)."""
PROFILE_INPUTS = (Event, TimerFired, DeliveryResult, ExitInstances)


def utc_now() -> datetime:
    return datetime.now(UTC)


class Input(msgspec.Struct):
    """One fetched message of a partition: its stream sequence and what it decoded to."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]
    deliveries: int
    message: Message | None
    problem: str | None = None


class Job(msgspec.Struct):
    """One partition's fetched batch, waiting for a committer."""

    partition: int
    epoch: int
    items: Sequence[Input]
    done: asyncio.Future[None] | None = None
    """Settled by the committer; ``None`` for the engine's own one-input retries."""


def _done(future: asyncio.Future[Job]) -> asyncio.Event:
    event = asyncio.Event()
    future.add_done_callback(lambda _: event.set())
    return event


def _settle(job: Job, failure: Exception | None) -> None:
    """Tell ``job``'s worker how its commit went (once; a later call changes nothing)."""
    if job.done is None or job.done.done():
        return  # settled already, an engine-made job, or its worker was cancelled meanwhile
    if failure is None:
        job.done.set_result(None)
    else:
        job.done.set_exception(failure)


def _lost(job: Job) -> LeaseLost:
    return LeaseLost(f"partition {job.partition} at epoch {job.epoch} is not ours")


class Engine:
    def __init__(
        self,
        pool: asyncpg.Pool,
        leases: PartitionLeases,
        journeys: JourneyCatalogue,
        topology: Topology,
        *,
        outbox: Outbox,
        max_cached_profiles: int,
        notify_within: float,
        committers: int = 2,
        max_group: int = 2_000,
        traits_budget: int = 65_536,
        first_shard: int = 0,
        clock: Clock = utc_now,
    ) -> None:
        """``first_shard``: committer ``n`` adds to the analytics counters' shard
        ``first_shard + n`` (``repo.add_stats``); replicas pick different ones."""
        self._traits_budget = traits_budget
        self._first_shard = first_shard
        self._outbox = outbox
        self._committers = committers
        self._max_group = max_group
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._pool = pool
        self._leases = leases
        self._journeys = journeys
        self._topology = topology
        self._max_cached = max_cached_profiles
        self._notify_within = notify_within
        self._clock = clock
        self._cache: OrderedDict[str, tuple[int, int, bytes]] = OrderedDict()
        """profile id -> (partition, epoch, encoded state): valid only while we hold that epoch.
        Encoded (as saved), not as objects: 100,000 actors' dicts and tuples would make every
        full garbage collection walk millions of objects, a pause of hundreds of milliseconds
        for every partition at once; bytes are not tracked, and decoding one costs microseconds."""

    def _writes(self, now: datetime, shard: int) -> BatchWrites:
        return BatchWrites(
            self._topology,
            now,
            notify_within=self._notify_within,
            traits_budget=self._traits_budget,
            shard=shard,
        )

    async def apply(self, partition: int, epoch: int, items: Sequence[Input]) -> None:
        """Apply ``items`` (in stream order), commit, and publish what they emit. Returns once the
        commit is durable (an input that can never be committed was dead-lettered instead). Raises
        ``LeaseLost`` (nothing committed) if another replica owns the partition now, or the
        transient failure that rolled the commit back: retry ``items`` later."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(Job(partition, epoch, items, done))
        await done

    async def run(self, stop: asyncio.Event) -> None:
        """Group commit: each committer takes every batch waiting (from any partition) and
        commits them in one transaction, so 64 partitions with a few inputs each cost one commit,
        not 64. Several committers overlap one transaction's WAL flush with the next's work; a
        partition has one batch in flight at most, so they never touch the same partition."""
        async with asyncio.TaskGroup() as tg:
            for n in range(self._committers):
                shard = (self._first_shard + n) % SHARDS
                tg.create_task(self._committer(stop, shard), name=f"committer-{n}")

    async def _committer(self, stop: asyncio.Event, shard: int) -> None:
        while not stop.is_set():
            get = asyncio.ensure_future(self._queue.get())
            await wait_any(stop, _done(get))
            if not get.done():
                get.cancel()
                return
            jobs = [get.result()]
            size = len(jobs[0].items)
            while size < self._max_group and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
                size += len(jobs[-1].items)
            await self._commit_group(jobs, shard)

    async def _commit_group(self, jobs: list[Job], shard: int) -> None:
        for job, failure in zip(jobs, await self._commit_isolating(jobs, shard), strict=True):
            _settle(job, failure)

    async def _commit_isolating(self, jobs: list[Job], shard: int) -> list[Exception | None]:
        """Commit ``jobs`` in one transaction; what each job's worker is told (``None``: done).

        A permanent failure (or one we cannot classify) is narrowed down instead of retried:
        each job alone, then each input of a failing job alone, in order; the input that fails
        alone is dead-lettered. Only a transient failure goes back to the workers."""
        try:
            lost = await self._commit(jobs, shard)
        except Exception as exc:
            if classify(exc) is Failure.TRANSIENT:
                return [exc] * len(jobs)
            if len(jobs) > 1:
                log.warning("group commit refused; committing its batches one by one",
                            batches=len(jobs), error=describe(exc))  # fmt: skip
                return [(await self._commit_isolating([job], shard))[0] for job in jobs]
            return [await self._commit_inputs_alone(jobs[0], exc, shard)]
        return [_lost(j) if j.partition in lost else None for j in jobs]

    async def _commit_inputs_alone(self, job: Job, exc: Exception, shard: int) -> Exception | None:
        if len(job.items) == 1:
            return await self._commit_poison(job, job.items[0], exc, shard)
        log.warning("batch refused; committing its inputs one at a time", partition=job.partition,
                    inputs=len(job.items), error=describe(exc))  # fmt: skip
        for item in job.items:
            alone = Job(job.partition, job.epoch, [item])
            [failure] = await self._commit_isolating([alone], shard)
            if failure is not None:
                return failure  # transient or lease lost: the worker retries from here
        return None

    async def _commit_poison(
        self, job: Job, item: Input, exc: Exception, shard: int
    ) -> Exception | None:
        """Dead-letter ``item``, which cannot be committed even alone, and record its sequence
        as applied, in one transaction fenced by the lease: it is reported exactly once."""
        now = self._clock()
        writes = self._writes(now, shard)
        reason = f"its writes were refused: {describe(exc)}"
        self._dead_letter(item, reason, writes, now, item.headers.get("traceparent"))
        writes.applied[job.partition] = item.seq
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                last = await self._leases.fence_many(conn, {job.partition: job.epoch})
                seq = last[job.partition]
                if seq is None:
                    return _lost(job)
                if seq >= item.seq:
                    return None  # committed meanwhile: the failure came after the commit
                rows = await writes.commit(conn)
            await self._outbox.publish([OutboxMessage(*row) for row in rows])
        except Exception as failure:
            return failure
        return None

    async def _commit(self, jobs: list[Job], shard: int) -> set[int]:
        """One transaction for ``jobs``, then the publish of its outbox; the partitions lost.

        The workers are told as soon as the commit is durable, so each partition fetches and
        applies its next batch while this one's messages are published: a partition waits for
        its own commit, never for a publish. (Messages are published in commit order in
        practice, since a partition's next batch needs a fetch and a commit first; nothing
        relies on it, as the relay may publish a left-behind row later than its successors.)"""
        async with self._pool.acquire() as conn:
            messages, lost = await self._apply_jobs(conn, jobs, shard)
            for job in jobs:  # before the release, which resets the connection: a round trip
                _settle(job, _lost(job) if job.partition in lost else None)
        await self._outbox.publish(messages)
        return lost

    async def _apply_jobs(
        self, conn: asyncpg.Connection, jobs: list[Job], shard: int
    ) -> tuple[list[OutboxMessage], set[int]]:
        started = time.perf_counter()
        catalogue = self._journeys.current  # one catalogue for the whole transaction
        now = self._clock()
        writes = self._writes(now, shard)
        async with conn.transaction():
            last = await self._leases.fence_many(conn, {j.partition: j.epoch for j in jobs})
            lost = {p for p, seq in last.items() if seq is None}
            fresh: list[tuple[Job, list[Input]]] = []
            for job in jobs:
                seq = last[job.partition]
                if seq is not None:
                    items = [i for i in job.items if i.seq > seq]
                    INPUTS.labels("any", "redelivered").inc(len(job.items) - len(items))
                    if items:
                        fresh.append((job, items))
            if not fresh:
                return [], lost
            states = await self._states_for(conn, fresh, catalogue)
            for job, items in fresh:
                for item in items:
                    self._apply_one(item, job.partition, states, writes, catalogue, now)
                writes.applied[job.partition] = max(i.seq for i in items)
            rows = await writes.commit(conn)
        epochs = {j.partition: j.epoch for j, _ in fresh}
        self._remember(writes, epochs)
        BATCH_SECONDS.observe(time.perf_counter() - started)
        committed = self._clock()
        for before_commit in writes.send_latencies:
            EVENT_TO_DELIVERY.observe(max(0.0, before_commit + (committed - now).total_seconds()))
        GROUP_SIZE.observe(sum(len(items) for _, items in fresh))
        return [OutboxMessage(*row) for row in rows], lost

    def _apply_one(
        self,
        item: Input,
        partition: int,
        states: dict[str, ProfileState],
        writes: BatchWrites,
        catalogue: Catalogue,
        now: datetime,
    ) -> None:
        """One input in a CONSUMER span that continues the trace its headers carry; what it
        emits (delivery requests, timers) keeps that span's context with the row. With tracing
        off, the context the input carried is kept instead, at no cost."""
        if not tracing_enabled():
            traceparent = item.headers.get("traceparent")
            self._apply_input(item, partition, states, writes, catalogue, now, traceparent)
            return
        attributes = {
            "messaging.system": "nats",
            "messaging.destination.name": item.subject,
            "messaging.operation.type": "process",
            "messaging.consumer.group.name": "matcher",
            "messaging.message.id": item.headers.get(MSG_ID, ""),
            "messaging.nats.stream.sequence": item.seq,
        }
        with consumer_span(f"process {item.subject}", item.headers, attributes):
            traceparent = current_traceparent()
            self._apply_input(item, partition, states, writes, catalogue, now, traceparent)

    def _apply_input(
        self,
        item: Input,
        partition: int,
        states: dict[str, ProfileState],
        writes: BatchWrites,
        catalogue: Catalogue,
        now: datetime,
        traceparent: str | None,
    ) -> None:
        message = item.message
        if not isinstance(message, PROFILE_INPUTS):
            reason = item.problem or f"the matcher does not handle {type(message).__name__}"
            self._dead_letter(item, reason, writes, now, traceparent)
            return
        kind = type(message).__name__
        pid = message.profile_id
        writes.record_delivery_event(message)
        traits = message.traits if isinstance(message, Event) and message.type == "identify" else {}
        if traits:
            writes.merge_traits(pid, traits)
        if not catalogue.interested_in(message):
            if traits:
                self._traits_changed_outside(pid, states, writes)
            INPUTS.labels(kind, "no_journey").inc()
            return
        state = states.get(pid) or ProfileState(profile_id=pid)
        try:
            new_state, effects = run_input(state, message, catalogue=catalogue, now=now)
        except Exception as exc:
            log.exception("input failed in the interpreter", subject=item.subject, seq=item.seq)
            reason = f"interpreter failed: {type(exc).__name__}: {exc}"
            self._dead_letter(item, reason, writes, now, traceparent)
            return
        states[pid] = new_state
        writes.add(pid, partition, new_state, effects, traceparent=traceparent)
        if isinstance(message, Event) and any(isinstance(e, SendRequested) for e in effects):
            writes.send_latencies.append((now - message.received_at).total_seconds())
        INPUTS.labels(kind, "applied").inc()

    def _traits_changed_outside(
        self, pid: str, states: dict[str, ProfileState], writes: BatchWrites
    ) -> None:
        """An identify no journey needed updated only ``profiles``; the actor re-reads its traits
        from there when next loaded, and one loaded in this batch sees them now."""
        self._cache.pop(pid, None)
        if pid in states:
            merged = {**states[pid].traits, **writes.traits[pid]}
            states[pid] = msgspec.structs.replace(states[pid], traits=merged)
            if pid in writes.states:
                writes.states[pid] = states[pid]

    def _dead_letter(
        self,
        item: Input,
        reason: str,
        writes: BatchWrites,
        now: datetime,
        traceparent: str | None = None,
    ) -> None:
        INPUTS.labels("any", "dead_letter").inc()
        stream = self._topology.inputs_stream
        letter = DeadLetter(
            stream=stream,
            consumer="matcher",
            subject=item.subject,
            reason=reason,
            deliveries=item.deliveries,
            at=now,
            data=item.data,
            headers=item.headers,
            stream_seq=item.seq,
        )
        writes.dead_letter(
            letter, msg_id=f"dlq:{stream}:matcher:{item.seq}", traceparent=traceparent
        )
        log.error("input dead-lettered", subject=item.subject, seq=item.seq, reason=reason)

    async def _states_for(
        self,
        conn: asyncpg.Connection,
        batches: Sequence[tuple[Job, Sequence[Input]]],
        catalogue: Catalogue,
    ) -> dict[str, ProfileState]:
        states: dict[str, ProfileState] = {}
        missing: dict[str, None] = {}  # ordered set
        for job, items in batches:
            for i in items:
                if not isinstance(i.message, PROFILE_INPUTS) or not catalogue.interested_in(
                    i.message
                ):
                    continue
                pid = i.message.profile_id
                if pid in states or pid in missing:
                    continue
                cached = self._cache.get(pid)
                if cached is not None and cached[:2] == (job.partition, job.epoch):
                    self._cache.move_to_end(pid)
                    states[pid] = decode_state(cached[2])
                else:
                    missing[pid] = None
        if missing:
            for pid, stored in (await repo.load_profiles(conn, list(missing))).items():
                state = (
                    decode_state(stored.state)
                    if stored.state is not None
                    else ProfileState(profile_id=pid)
                )
                if stored.traits is not None:
                    state = msgspec.structs.replace(state, traits=stored.traits)
                states[pid] = state
        return states

    def _remember(self, writes: BatchWrites, epochs: dict[int, int]) -> None:
        """After the commit only: a rolled-back batch must not leak into the cache."""
        for pid, encoded in writes.encoded.items():
            partition = writes.partition_of[pid]
            self._cache[pid] = (partition, epochs[partition], encoded)
            self._cache.move_to_end(pid)
        while len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)  # evict the actor idle the longest
        CACHED.set(len(self._cache))

    def forget_partition(self, partition: int) -> None:
        """Another replica may own ``partition`` now: its cached states may go stale."""
        for pid in [pid for pid, (p, _, _) in self._cache.items() if p == partition]:
            del self._cache[pid]
        CACHED.set(len(self._cache))
