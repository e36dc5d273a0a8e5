"""One worker per owned partition, started and stopped as leases move.

A worker owns its partition at one lease epoch. It (re)creates the partition's consumer for that
epoch, ``matcher-{p}-e{epoch}``, starting right after the last sequence committed for the
partition (``partition_leases.last_applied_seq``), and deletes the previous epoch's consumer. So
whatever the previous owner fetched but never committed is delivered again, in order, and a
fenced-out old owner cannot pull from the new consumer. Each fetched batch goes to the engine,
which commits it (together with other partitions' batches: group commit) fenced by the lease and
publishes the outbox; the batch is acked last.

A poison input never reaches the worker: the engine dead-letters it and commits the rest. What
comes back is transient (PostgreSQL or NATS unavailable), and nothing is nakked for it: the batch
is retried in place with backoff (the partition waits, which keeps its order) until it commits, the
lease is lost, or the service stops. In the last two cases nothing is acked; the next worker
replays from the committed sequence. A partition that has waited longer than
``stalled_after_seconds`` is reported (``/readyz``, ``cairn status``, a gauge) rather than silent.

Deliveries lost on the way (a NATS restart drops the connection while the server sends them)
leave a gap in the consumer's delivery sequence; the worker commits up to the gap and rebinds from
its commit, so no input is ever skipped (``PartitionWorker._contiguous``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from typing import Any

import structlog
from nats.aio.msg import Msg
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import Counter

from cairn_common.consume import fetch_unless_stopped
from cairn_common.failures import Backoff, describe, is_transient
from cairn_common.messages import decode
from cairn_common.runtime import ServiceContext
from cairn_common.waiting import wait_any
from cairn_matcher import repo
from cairn_matcher.engine import Engine, Input
from cairn_matcher.leases import LeaseLost, PartitionLeases
from cairn_matcher.settings import Settings

log = structlog.get_logger(__name__)

GAPS = Counter(
    "cairn_matcher_delivery_gaps_total",
    "Times a partition consumer's deliveries were lost on the way and it rebound from its commit",
)


ACK_EVERY = 1.0
"""Seconds between acknowledgements of a busy partition consumer (far below its ack wait)."""


def consumer_name(partition: int, epoch: int) -> str:
    return f"matcher-{partition}-e{epoch}"


class PartitionWorker:
    def __init__(
        self,
        ctx: ServiceContext[Settings],
        partition: int,
        epoch: int,
        leases: PartitionLeases,
        engine: Engine,
    ) -> None:
        self._ctx = ctx
        self.partition = partition
        self.epoch = epoch
        self._leases = leases
        self._engine = engine
        self.stop = asyncio.Event()
        self.waiting_since: float | None = None
        """Since when (``time.monotonic``) the batch in hand (or the consumer's binding) has been
        waiting to commit; ``None`` between batches."""
        self._unacked: Msg | None = None
        """The last committed message not acknowledged yet (``AckPolicy.ALL``: it acks all)."""
        self._unacked_count = 0
        self._acked_at = time.monotonic()
        self._next_delivery: int | None = None
        """The consumer sequence the next delivery must have; ``None`` right after binding."""

    @property
    def _stopping(self) -> bool:
        return self.stop.is_set() or self._ctx.stopping.is_set()

    async def run(self) -> None:
        self._engine.forget_partition(self.partition)
        sub = await self._bind()
        if sub is None:
            return
        log.info("partition worker started", partition=self.partition, epoch=self.epoch)
        try:
            while not self._stopping and sub is not None:
                msgs = await self._fetch(sub)
                if not msgs:
                    await self._ack()  # idle: acknowledge what is committed
                    continue
                contiguous = self._contiguous(msgs)
                if contiguous:
                    await self._handle(contiguous)
                if len(contiguous) < len(msgs) and not self._stopping:
                    await self._ack()
                    await _unless_transient(sub.unsubscribe())
                    self._next_delivery = None
                    sub = await self._bind()  # None only when stopping
        finally:
            await self._ack()
            if sub is not None:
                await _unless_transient(sub.unsubscribe())

    def _contiguous(self, msgs: list[Msg]) -> list[Msg]:
        """The fetched messages up to the first gap in the consumer's delivery sequence.

        A gap means deliveries were lost on the way (the connection dropped while the server
        sent them: a NATS restart). The server counts them delivered and would send them again
        only after ``ack_wait``; meanwhile the messages after them would be committed and
        acknowledged (``AckPolicy.ALL`` acknowledges everything before too), and the lost ones
        skipped for good as already applied. So the worker commits only up to the gap and then
        rebinds from its committed sequence (``_bind``). A delivery sequence lower than
        expected (a restarted server whose consumer state lagged) only repeats inputs, which the
        committed sequence skips."""
        kept: list[Msg] = []
        for msg in msgs:
            seq = msg.metadata.sequence.consumer if msg.metadata.sequence else None
            if seq is None:
                kept.append(msg)
                continue
            if self._next_delivery is not None and seq > self._next_delivery:
                GAPS.inc()
                log.warning("deliveries lost on the way; rebinding from the committed sequence",
                            partition=self.partition, expected=self._next_delivery,
                            got=seq)  # fmt: skip
                return kept
            self._next_delivery = seq + 1
            kept.append(msg)
        return kept

    async def _bind(self) -> JetStreamContext.PullSubscription | None:
        backoff = Backoff()
        while not self._stopping:
            try:
                sub = await self._create_consumer()
                self.waiting_since = None
                return sub
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._waiting()
                log.warning("cannot bind the partition consumer yet", partition=self.partition,
                            error=describe(exc))  # fmt: skip
            await wait_any(self.stop, self._ctx.stopping, timeout=backoff.next())
        return None

    def _waiting(self) -> None:
        if self.waiting_since is None:
            self.waiting_since = time.monotonic()

    async def _create_consumer(self) -> JetStreamContext.PullSubscription:
        ctx, p = self._ctx, self.partition
        js, stream = ctx.js, ctx.topology.inputs_stream
        async with ctx.pool.acquire() as conn:
            last = await repo.last_applied(conn, p)
        for old in {consumer_name(p, self.epoch - 1), consumer_name(p, self.epoch)}:
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(stream, old)
        name = consumer_name(p, self.epoch)
        policy = api.DeliverPolicy.BY_START_SEQUENCE if last else api.DeliverPolicy.ALL
        await js.add_consumer(
            stream,
            api.ConsumerConfig(
                durable_name=name,
                description=f"Partition {p} inputs for the matcher at lease epoch {self.epoch}",
                filter_subject=ctx.topology.partition_filter(p),
                deliver_policy=policy,
                opt_start_seq=last + 1 if last else None,
                ack_policy=api.AckPolicy.ALL,
                ack_wait=ctx.settings.consumer_ack_wait_seconds,
                max_ack_pending=ctx.settings.fetch_batch * 4,
                inactive_threshold=24 * 3600.0,
            ),
        )
        return await js.pull_subscribe_bind(durable=name, stream=stream)

    async def _fetch(self, sub: JetStreamContext.PullSubscription) -> list[Msg]:
        s = self._ctx.settings
        try:
            return await fetch_unless_stopped(
                sub, s.fetch_batch, s.fetch_timeout_seconds, self.stop, self._ctx.stopping
            )
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("fetch failed", partition=self.partition, error=describe(exc))
            await wait_any(self.stop, self._ctx.stopping, timeout=0.5)
            return []

    async def _handle(self, msgs: list[Msg]) -> None:
        items = [_decoded(m) for m in msgs]
        if not await self._commit(items):
            return  # not committed: nothing is acked, the next worker replays from the commit
        self._unacked = msgs[-1]
        self._unacked_count += len(msgs)
        s = self._ctx.settings
        if self._unacked_count >= s.fetch_batch or time.monotonic() - self._acked_at >= ACK_EVERY:
            await self._ack()

    async def _ack(self) -> None:
        """Acknowledge everything committed so far (``AckPolicy.ALL``), at most every
        ``ACK_EVERY`` seconds or ``fetch_batch`` messages while busy: the commit, not the ack,
        is what records progress (a new consumer starts after ``last_applied_seq``), so an ack
        only keeps the server from redelivering after ``ack_wait`` and under
        ``max_ack_pending``. A lost ack means a redelivery, which the committed sequence skips."""
        msg, self._unacked, self._unacked_count = self._unacked, None, 0
        self._acked_at = time.monotonic()
        if msg is not None:
            await _unless_transient(msg.ack())

    async def _commit(self, items: list[Input]) -> bool:
        backoff = Backoff()
        self._waiting()
        try:
            while True:
                try:
                    await self._engine.apply(self.partition, self.epoch, items)
                    return True
                except LeaseLost as exc:
                    log.warning("lease lost; handing the partition over",
                                partition=self.partition, error=str(exc))  # fmt: skip
                    self._leases.forget(self.partition, self.epoch)
                    self.stop.set()
                    return False
                except Exception as exc:
                    # Transient, or the dead-lettering of a poison input itself failed: the
                    # engine narrows the batch down again on the next attempt.
                    log.warning("batch not committed; retrying", partition=self.partition,
                                error=describe(exc), transient=is_transient(exc))  # fmt: skip
                if self._stopping:
                    return False
                await wait_any(self.stop, self._ctx.stopping, timeout=backoff.next())
        finally:
            self.waiting_since = None


async def _unless_transient(step: Coroutine[Any, Any, object]) -> None:
    """Await ``step``; a transient failure of it is logged and forgotten."""
    try:
        await step
    except Exception as exc:
        if not is_transient(exc):
            raise
        log.info("best-effort step failed", error=describe(exc))


def _decoded(msg: Msg) -> Input:
    meta = msg.metadata
    seq = meta.sequence.stream if meta.sequence else 0
    headers = {k: str(v) for k, v in (msg.headers or {}).items()}
    item = Input(seq, msg.subject, msg.data, headers, meta.num_delivered or 1, message=None)
    try:
        item.message = decode(msg.data)
    except Exception as exc:  # undecodable bytes: dead-lettered in the batch's commit
        item.problem = f"undecodable message: {exc}"
    return item


class PartitionSupervisor:
    """Keeps exactly one worker per partition this replica holds, at the epoch it holds it.

    A worker for a partition whose epoch changed is stopped, and its successor starts only once it
    has finished, so two workers never act for one partition inside this process either.
    """

    def __init__(
        self,
        ctx: ServiceContext[Settings],
        leases: PartitionLeases,
        engine: Engine,
    ) -> None:
        self._ctx = ctx
        self._leases = leases
        self._engine = engine
        self._running: dict[int, tuple[PartitionWorker, asyncio.Task[None]]] = {}
        self._finished = asyncio.Event()

    @property
    def partitions(self) -> list[int]:
        return sorted(self._running)

    def stalled(self, after: float) -> dict[int, float]:
        """Partitions whose batch has not committed for ``after`` seconds or more -> seconds."""
        now = time.monotonic()
        waits = {p: w.waiting_since for p, (w, _) in self._running.items()}
        return {p: now - t for p, t in sorted(waits.items()) if t is not None and now - t >= after}

    def consumers(self) -> dict[str, str]:
        """The partition consumers read now: ``matcher-{p}`` (stable metric label) -> durable."""
        return {f"matcher-{p}": consumer_name(p, w.epoch) for p, (w, _) in self._running.items()}

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            while not self._ctx.stopping.is_set():
                self._leases.changed.clear()
                self._finished.clear()
                self._sync(tg)
                self._ctx.started.set()
                await wait_any(self._leases.changed, self._finished, self._ctx.stopping)
            for worker, _ in self._running.values():
                worker.stop.set()  # each finishes its batch in flight, then the group ends

    def _sync(self, tg: asyncio.TaskGroup) -> None:
        held = dict(self._leases.held)
        for p, (worker, task) in list(self._running.items()):
            if task.done():
                del self._running[p]
            elif held.get(p) != worker.epoch:
                worker.stop.set()
        for p, epoch in sorted(held.items()):
            if p not in self._running:
                worker = PartitionWorker(self._ctx, p, epoch, self._leases, self._engine)
                task = tg.create_task(self._guarded(worker), name=f"partition-{p}")
                self._running[p] = (worker, task)

    async def _guarded(self, worker: PartitionWorker) -> None:
        """A worker's unexpected failure stops that worker only; the next sync restarts it."""
        try:
            await worker.run()
        except Exception:
            log.exception("partition worker failed", partition=worker.partition)
            await wait_any(self._ctx.stopping, timeout=1.0)
        finally:
            self._finished.set()
