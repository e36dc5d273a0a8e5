"""Partition ownership across matcher replicas: leases in PostgreSQL, with fencing.

Every replica heartbeats in ``matcher_members`` and renews its leases every ``renew`` seconds.
The fair share is P // n for n live replicas, plus one for the first P % n of them by name. A
replica above its share releases its highest partitions; one below it takes unowned or expired
ones (``SKIP LOCKED``, so two replicas never take the same one). Taking a partition bumps its
``epoch``. A replica that dies stops renewing; its leases expire after ``ttl`` seconds
and the others take them over.

Fencing: ``fence()`` is called inside every commit of the matcher. It locks the partition's row
and checks owner and epoch, so a replica whose lease was taken over can never commit for that
partition again, even if it has not noticed yet.

Lock order (the rule that keeps renewal and the committers free of deadlocks): every statement
that locks ``partition_leases`` rows locks them in ascending partition order, through a subquery
``ORDER BY partition FOR NO KEY UPDATE`` (PostgreSQL locks a sorted subquery's rows in its output
order), and takes the lock it will end with at once, never a shared lock it upgrades later:
renewal, taking (``SKIP LOCKED``, so it never waits), releasing, and fencing (which then records
``last_applied_seq`` on the rows it holds). A commit takes its lease rows first, before any other
table, so they also guard every row of the partition's profiles: two transactions never hold
rows of one partition at once. A plain ``UPDATE … WHERE owner = $1`` would lock in the order of
the table's heap, which every update reshuffles; against a commit holding several of the same
rows it deadlocks, and when the renewal is the victim the replica fences itself out of them all.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import structlog
from prometheus_client import Gauge

from cairn_common.failures import describe, is_transient

log = structlog.get_logger(__name__)

OWNED = Gauge("cairn_matcher_owned_partitions", "Partitions this replica holds a lease on")


class LeaseLost(Exception):
    """This replica no longer owns the partition; the batch must be rolled back and dropped."""


class PartitionLeases:
    def __init__(
        self, pool: asyncpg.Pool, owner: str, partitions: int, *, ttl: float, renew: float
    ) -> None:
        self._pool = pool
        self.owner = owner
        self._partitions = partitions
        self._ttl = ttl
        self._renew = renew
        self.held: dict[int, int] = {}
        """partition -> epoch, as of the last renewal."""
        self.changed = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        await self._ensure_rows()
        await self._take_back_own()
        while not stop.is_set():
            try:
                await self.rebalance()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # Leases we cannot renew expire by themselves; fence() stops our commits then.
                log.warning("lease renewal failed; will retry", error=describe(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._renew)

    async def _take_back_own(self) -> None:
        """Leases under this replica's name at start were held by a process of the same name that
        is gone (a restarted container keeps its pod name; ``cairn up`` names its matcher): they
        are released and, by the first rebalance, taken again with a new epoch, at once rather
        than after ``ttl``. Replica names must therefore be unique among live replicas, as the
        default (host and PID) and Kubernetes' pod names are."""
        try:
            if count := await self.release_all():
                log.info("took back the partitions of this replica's previous process",
                         partitions=count)  # fmt: skip
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("could not take back this replica's partitions; they expire by themselves",
                        error=describe(exc))  # fmt: skip

    async def _ensure_rows(self) -> None:
        await self._pool.execute(
            "INSERT INTO partition_leases (partition) SELECT generate_series(0, $1 - 1) "
            "ON CONFLICT DO NOTHING",
            self._partitions,
        )

    async def rebalance(self) -> None:
        """Heartbeat, renew, then release or take partitions towards the fair share."""
        async with self._pool.acquire() as conn, conn.transaction():
            members = await self._heartbeat(conn)
            live = len(members)
            renewed = await self._renew_held(conn)
            rank = members.index(self.owner)
            target = self._partitions // live + (1 if rank < self._partitions % live else 0)
            if len(renewed) > target:
                extra = sorted(renewed)[target:]
                # rows this transaction locked in _renew_held already: no new lock is taken
                await conn.execute(
                    "UPDATE partition_leases SET owner = NULL, expires_at = '-infinity' "
                    "WHERE partition = ANY($1) AND owner = $2",
                    extra, self.owner,
                )  # fmt: skip
                for p in extra:
                    del renewed[p]
            elif len(renewed) < target:
                renewed.update(await self._take(conn, target - len(renewed)))
        if renewed != self.held:
            lost = set(self.held) - set(renewed)
            gained = set(renewed) - set(self.held)
            log.info("partitions changed", gained=sorted(gained), lost=sorted(lost),
                     held=len(renewed), live_replicas=live)  # fmt: skip
            self.held = renewed
            OWNED.set(len(renewed))
            self.changed.set()

    async def _heartbeat(self, conn: asyncpg.Connection) -> list[str]:
        await conn.execute(
            "INSERT INTO matcher_members (owner, seen_at) VALUES ($1, now()) "
            "ON CONFLICT (owner) DO UPDATE SET seen_at = now()",
            self.owner,
        )
        rows = await conn.fetch(
            "SELECT owner FROM matcher_members "
            "WHERE seen_at > now() - make_interval(secs => $1) ORDER BY owner",
            self._ttl,
        )
        return [r["owner"] for r in rows]

    async def _renew_held(self, conn: asyncpg.Connection) -> dict[int, int]:
        rows = await conn.fetch(
            """UPDATE partition_leases AS pl
               SET expires_at = now() + make_interval(secs => $2)
               FROM (SELECT partition FROM partition_leases
                     WHERE owner = $1 AND expires_at > now()
                     ORDER BY partition FOR NO KEY UPDATE) AS mine
               WHERE pl.partition = mine.partition
               RETURNING pl.partition, pl.epoch""",
            self.owner, self._ttl,
        )  # fmt: skip
        return {r["partition"]: r["epoch"] for r in rows}

    async def _take(self, conn: asyncpg.Connection, count: int) -> dict[int, int]:
        rows = await conn.fetch(
            """UPDATE partition_leases SET owner = $1, epoch = epoch + 1,
                      expires_at = now() + make_interval(secs => $2)
               WHERE partition IN (
                   SELECT partition FROM partition_leases
                   WHERE owner IS NULL OR expires_at <= now()
                   ORDER BY partition LIMIT $3 FOR NO KEY UPDATE SKIP LOCKED)
               RETURNING partition, epoch""",
            self.owner, self._ttl, count,
        )  # fmt: skip
        return {r["partition"]: r["epoch"] for r in rows}

    async def fence(
        self, conn: asyncpg.Connection, partition: int, epoch: int | None = None
    ) -> int:
        """Inside the caller's transaction: prove we still own ``partition`` (at ``epoch``, by
        default the one we last saw); returns the INPUTS sequence applied last. Raises
        ``LeaseLost`` otherwise."""
        if epoch is None:
            epoch = self.held.get(partition)
        row = await conn.fetchrow(
            "SELECT owner, epoch, last_applied_seq, expires_at > now() AS live "
            "FROM partition_leases WHERE partition = $1 FOR NO KEY UPDATE",
            partition,
        )
        if row is None or row["owner"] != self.owner or row["epoch"] != epoch or not row["live"]:
            raise LeaseLost(f"partition {partition} is no longer owned by {self.owner}")
        seq: int = row["last_applied_seq"]
        return seq

    async def fence_many(
        self, conn: asyncpg.Connection, epochs: dict[int, int]
    ) -> dict[int, int | None]:
        """``fence`` for several partitions in one statement, locking them in partition order:
        partition -> the sequence applied last, or ``None`` where we no longer own it at that
        epoch. The lock is the one ``record_applied`` needs later in the same transaction, so it
        is never upgraded (two holders of a shared lock that both upgrade deadlock)."""
        rows = await conn.fetch(
            "SELECT partition, owner, epoch, last_applied_seq, expires_at > now() AS live "
            "FROM partition_leases WHERE partition = ANY($1) "
            "ORDER BY partition FOR NO KEY UPDATE",
            sorted(epochs),
        )
        found: dict[int, int | None] = dict.fromkeys(epochs)
        for r in rows:
            p = r["partition"]
            if r["owner"] == self.owner and r["epoch"] == epochs[p] and r["live"]:
                found[p] = r["last_applied_seq"]
        return found

    def forget(self, partition: int, epoch: int) -> None:
        """A worker found it was fenced out: stop counting the partition as ours until the next
        renewal says otherwise."""
        if self.held.get(partition) == epoch:
            del self.held[partition]
            OWNED.set(len(self.held))
            self.changed.set()

    async def release_all(self) -> int:
        """Hand every partition back at once instead of waiting for expiry: on a clean stop, and
        at start for a previous process of the same name. Returns how many were held."""
        async with self._pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                """UPDATE partition_leases AS pl SET owner = NULL, expires_at = '-infinity'
                   FROM (SELECT partition FROM partition_leases WHERE owner = $1
                         ORDER BY partition FOR NO KEY UPDATE) AS mine
                   WHERE pl.partition = mine.partition""",
                self.owner,
            )
            await conn.execute("DELETE FROM matcher_members WHERE owner = $1", self.owner)
        self.held = {}
        OWNED.set(0)
        self.changed.set()
        return int(status.split()[-1])  # "UPDATE n"
