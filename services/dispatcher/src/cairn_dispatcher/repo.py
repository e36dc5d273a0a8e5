"""The dispatcher's SQL: the delivery ledger, suppressions, caps, instances, documents."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from cairn_common.failures import describe, is_permanent
from cairn_common.storable import storable_text, string_problem

TERMINAL = frozenset(
    {"sent", "failed", "bounced", "skipped", "suppressed", "dropped", "dead_lettered"}
)


class LedgerRow(msgspec.Struct, frozen=True, kw_only=True):
    delivery_id: str
    status: str
    reason: str | None
    provider_message_id: str | None
    attempts: int
    sent_at: datetime | None = None
    slot_at: datetime | None = None
    held_since: datetime | None = None
    claimed_by: str | None = None
    claim_until: datetime | None = None


class Claims(msgspec.Struct, frozen=True, kw_only=True):
    """What claiming a batch found (``DeliveryLedger.claim``)."""

    rows: dict[str, LedgerRow]
    """What the ledger held for each delivery before this claim."""
    claimed: set[str]
    """Deliveries this replica now holds: it may send them."""
    refused: dict[str, str]
    """Deliveries whose row the database refuses for good, and why."""

    def lapses_in(self, delivery_id: str) -> float | None:
        """Seconds until another replica's claim on the delivery lapses, if it holds one."""
        row = self.rows.get(delivery_id)
        if row is None or row.status != "sending" or row.claim_until is None:
            return None
        return max(0.0, (row.claim_until - datetime.now(UTC)).total_seconds())


class LedgerKey(msgspec.Struct, frozen=True, kw_only=True):
    """What names a ledger row: the delivery and where it comes from (the row's first columns,
    in their order)."""

    delivery_id: str
    profile_id: str
    journey: str
    version: int
    instance_id: str
    step_id: str
    channel: str | None
    destination: str | None


class LedgerEntry(LedgerKey, frozen=True, kw_only=True):
    """One outcome to write; terminal rows are never overwritten."""

    address: str | None
    status: str
    reason: str | None
    provider_message_id: str | None
    attempts: int
    sent_at: datetime | None
    slot_at: datetime | None = None
    """The rate-limit slot it was given (``cairn_dispatcher.rates``); a ``deferred`` row with
    one waits for it."""
    held_since: datetime | None = None
    """When a rate limit first held it back."""
    redriven: bool = False
    """Re-driven from the dead letters: may replace this delivery's ``dead_lettered`` row."""


class Suppression(msgspec.Struct, frozen=True, kw_only=True):
    """A suppression a delivery's outcome caused (a bounce, an unsubscribe), written with it."""

    delivery_id: str
    profile_id: str
    channel: str
    address: str | None
    reason: str


class ClaimRequest(LedgerKey, frozen=True, kw_only=True):
    """A delivery to claim before sending it."""

    redriven: bool = False
    """Re-driven from the dead letters: may take a ``dead_lettered`` row."""


def _storable(entry: LedgerEntry) -> LedgerEntry:
    """Every text of the entry as PostgreSQL can store it: a forged request's NUL in an address
    or an id must not cost the ledger row that records what was done."""
    changes = {
        name: storable_text(value)
        for name in LedgerEntry.__struct_fields__
        if isinstance(value := getattr(entry, name), str) and string_problem(value) is not None
    }
    return msgspec.structs.replace(entry, **changes) if changes else entry


class DeliveryLedger:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def claim(
        self,
        requests: Sequence[ClaimRequest],
        replica: str,
        seconds: float,
    ) -> Claims:
        """Claim a batch's deliveries for this replica for ``seconds`` (decision 0064) and read
        what the ledger held for them before. A delivery is claimed unless its row is terminal
        (a ``dead_lettered`` one may be taken by a re-driven request) or another replica's
        claim on it has not lapsed; a claim of this replica's own name is taken back (the
        process that made it is gone or gave the batch up). The claim is written without
        waiting for the disk: losing one in a database crash only reopens the window it
        closes. A row the database refuses for a permanent reason costs only its delivery."""
        if not requests:
            return Claims(rows={}, claimed=set(), refused={})
        try:
            return await self._claim(requests, replica, seconds)
        except Exception as exc:
            if not is_permanent(exc):
                raise
            if len(requests) == 1:
                only = {requests[0].delivery_id: describe(exc)}
                return Claims(rows={}, claimed=set(), refused=only)
        rows: dict[str, LedgerRow] = {}
        claimed: set[str] = set()
        refused: dict[str, str] = {}
        for request in requests:
            try:
                one = await self._claim([request], replica, seconds)
            except Exception as exc:
                if not is_permanent(exc):
                    raise
                refused[request.delivery_id] = describe(exc)
                continue
            rows.update(one.rows)
            claimed |= one.claimed
        return Claims(rows=rows, claimed=claimed, refused=refused)

    async def _claim(
        self, requests: Sequence[ClaimRequest], replica: str, seconds: float
    ) -> Claims:
        # the request's ids were checked storable (handlers._unstorable_key); a delivery twice in
        # one batch is claimed once
        unique = list({r.delivery_id: r for r in requests}.values())
        columns = [[getattr(r, c) for r in unique] for c in ClaimRequest.__struct_fields__]
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit = off")
            records = await conn.fetch(
                """
                WITH wanted AS (
                    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[],
                        $5::text[], $6::text[], $7::text[], $8::text[], $9::bool[])
                        AS w(delivery_id, profile_id, journey, version, instance_id, step_id,
                             channel, destination, redriven)
                ), taken AS (
                    INSERT INTO delivery_ledger AS l (delivery_id, profile_id, journey, version,
                        instance_id, step_id, channel, destination, status, claimed_by,
                        claim_until)
                    SELECT delivery_id, profile_id, journey, version, instance_id, step_id,
                        channel, destination, 'sending', $10, now() + make_interval(secs => $11)
                    FROM wanted
                    ON CONFLICT (delivery_id) DO UPDATE SET
                        status = 'sending',
                        claimed_by = EXCLUDED.claimed_by,
                        claim_until = EXCLUDED.claim_until,
                        updated_at = now()
                    WHERE (l.status NOT IN ('sent', 'failed', 'bounced', 'skipped',
                               'suppressed', 'dropped', 'dead_lettered')
                           OR (l.status = 'dead_lettered' AND l.delivery_id IN (
                               SELECT delivery_id FROM wanted WHERE redriven)))
                      AND (l.status <> 'sending' OR l.claim_until < now()
                           OR l.claimed_by = EXCLUDED.claimed_by)
                    RETURNING l.delivery_id
                )
                SELECT w.delivery_id, t.delivery_id IS NOT NULL AS claimed, b.status, b.reason,
                    b.provider_message_id, b.attempts, b.sent_at, b.slot_at, b.held_since,
                    b.claimed_by, b.claim_until
                FROM wanted w
                LEFT JOIN delivery_ledger b ON b.delivery_id = w.delivery_id
                LEFT JOIN taken t ON t.delivery_id = w.delivery_id
                """,
                *columns,
                replica,
                seconds,
            )
        rows: dict[str, LedgerRow] = {}
        claimed: set[str] = set()
        for r in records:
            if r["claimed"]:
                claimed.add(r["delivery_id"])
            if r["status"] is not None:  # the snapshot before this statement's claim
                fields = dict(r)
                del fields["claimed"]
                rows[r["delivery_id"]] = LedgerRow(**fields)
        return Claims(rows=rows, claimed=claimed, refused={})

    async def renew(self, delivery_ids: Sequence[str], replica: str, seconds: float) -> None:
        """Keep this replica's claims on deliveries still being sent for ``seconds`` more."""
        if not delivery_ids:
            return
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit = off")
            await conn.execute(
                "UPDATE delivery_ledger SET claim_until = now() + make_interval(secs => $3)"
                " WHERE delivery_id = ANY($1::text[]) AND status = 'sending'"
                " AND claimed_by = $2",
                list(delivery_ids),
                replica,
                seconds,
            )

    async def record(
        self, entries: Sequence[LedgerEntry], suppress: Sequence[Suppression] = ()
    ) -> dict[str, str]:
        """Write a batch's outcomes and the suppressions they caused in one transaction (group
        commit). A row the database refuses for a permanent reason costs only its own delivery:
        the batch is written again one delivery at a time, and the reason each refused delivery
        was refused is returned (``delivery_id -> reason``). A transient failure propagates."""
        if not entries:
            return {}
        try:
            await self._write(entries, suppress)
            return {}
        except Exception as exc:
            if not is_permanent(exc):
                raise
            if len(entries) == 1:
                return {entries[0].delivery_id: describe(exc)}
        refused: dict[str, str] = {}
        for entry in entries:
            own = [s for s in suppress if s.delivery_id == entry.delivery_id]
            try:
                await self._write([entry], own)
            except Exception as exc:
                if not is_permanent(exc):
                    raise
                refused[entry.delivery_id] = describe(exc)
        return refused

    async def _write(self, entries: Sequence[LedgerEntry], suppress: Sequence[Suppression]) -> None:
        entries = [_storable(e) for e in entries]
        columns = [f for f in LedgerEntry.__struct_fields__ if f != "redriven"]
        arrays = [[getattr(e, c) for e in entries] for c in columns]
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """
                INSERT INTO delivery_ledger (delivery_id, profile_id, journey, version,
                    instance_id, step_id, channel, destination, address, status, reason,
                    provider_message_id, attempts, sent_at, slot_at, held_since)
                SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[],
                    $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                    $12::text[], $13::int[], $14::timestamptz[], $15::timestamptz[],
                    $16::timestamptz[])
                ON CONFLICT (delivery_id) DO UPDATE SET
                    status = EXCLUDED.status,
                    reason = EXCLUDED.reason,
                    provider_message_id = COALESCE(EXCLUDED.provider_message_id,
                                                   delivery_ledger.provider_message_id),
                    attempts = GREATEST(EXCLUDED.attempts, delivery_ledger.attempts),
                    sent_at = COALESCE(delivery_ledger.sent_at, EXCLUDED.sent_at),
                    address = COALESCE(EXCLUDED.address, delivery_ledger.address),
                    slot_at = EXCLUDED.slot_at,
                    held_since = COALESCE(delivery_ledger.held_since, EXCLUDED.held_since),
                    claimed_by = NULL,
                    claim_until = NULL,
                    updated_at = now()
                WHERE delivery_ledger.status NOT IN ('sent', 'failed', 'bounced', 'skipped',
                    'suppressed', 'dropped')
                  AND (delivery_ledger.status <> 'dead_lettered'
                       OR delivery_ledger.delivery_id = ANY($17::text[]))
                """,
                *arrays,
                [e.delivery_id for e in entries if e.redriven],
            )
            if suppress:
                await conn.execute(
                    "INSERT INTO suppressions (profile_id, channel, address, reason)"
                    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])"
                    " ON CONFLICT DO NOTHING",
                    [storable_text(s.profile_id) for s in suppress],
                    [storable_text(s.channel) for s in suppress],
                    [storable_text(s.address or "") for s in suppress],
                    [s.reason for s in suppress],
                )

    async def sent_counts(
        self, keys: Iterable[tuple[str, str, float]]
    ) -> dict[tuple[str, str], int]:
        """Sends per (profile, channel) within each key's window (seconds)."""
        keys = list(keys)
        if not keys:
            return {}
        records = await self._pool.fetch(
            """
            SELECT q.profile_id, q.channel, count(l.delivery_id) AS n
            FROM unnest($1::text[], $2::text[], $3::float8[]) AS q(profile_id, channel, secs)
            LEFT JOIN delivery_ledger l
              ON l.profile_id = q.profile_id AND l.channel = q.channel AND l.status = 'sent'
             AND l.sent_at > now() - make_interval(secs => q.secs)
            GROUP BY q.profile_id, q.channel
            """,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
        )
        return {(r["profile_id"], r["channel"]): r["n"] for r in records}


class Suppressions:
    """The suppression list (migration 0002): ``address = ''`` suppresses every address of the
    profile on that channel; a bounced or complained address is suppressed for every profile."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def matching(
        self, keys: Sequence[tuple[str, str, str | None]]
    ) -> dict[tuple[str, str, str | None], str]:
        """Reason each (profile, channel, address) is suppressed, for those that are."""
        if not keys:
            return {}
        records = await self._pool.fetch(
            """
            SELECT q.profile_id, q.channel, q.address, min(s.reason) AS reason
            FROM unnest($1::text[], $2::text[], $3::text[]) AS q(profile_id, channel, address)
            JOIN suppressions s ON s.channel = q.channel
             AND ((s.profile_id = q.profile_id AND s.address IN ('', coalesce(q.address, '')))
                  OR (s.address <> '' AND s.address = q.address
                      AND s.reason IN ('bounced', 'complained')))
            GROUP BY q.profile_id, q.channel, q.address
            """,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
        )
        return {(r["profile_id"], r["channel"], r["address"]): r["reason"] for r in records}


class Instances:
    """Reads ``journey_instances`` (the matcher's table) when it exists."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._exists: bool | None = None

    async def statuses(self, instance_ids: Sequence[str]) -> dict[str, str]:
        if self._exists is None or not self._exists:
            self._exists = bool(
                await self._pool.fetchval("SELECT to_regclass('journey_instances') IS NOT NULL")
            )
        if not self._exists or not instance_ids:
            return {}
        records = await self._pool.fetch(
            "SELECT instance_id, status FROM journey_instances WHERE instance_id = ANY($1::text[])",
            list(instance_ids),
        )
        return {r["instance_id"]: r["status"] for r in records}


class Documents:
    """Channel, Destination and Template documents, and templates frozen into journey versions."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def resources(self, kinds: Sequence[str]) -> list[tuple[str, str, dict[str, Any]]]:
        records = await self._pool.fetch(
            "SELECT kind, name, document FROM resources WHERE kind = ANY($1::text[])", list(kinds)
        )
        return [(r["kind"], r["name"], _json(r["document"])) for r in records]

    async def version_templates(self, journey: str, version: int) -> dict[str, Any] | None:
        """The templates frozen with a published version (name -> Template document)."""
        value = await self._pool.fetchval(
            "SELECT templates FROM journey_versions WHERE journey = $1 AND version = $2",
            journey,
            version,
        )
        return None if value is None else _json(value)


def _json(value: Any) -> dict[str, Any]:
    loaded = json.loads(value) if isinstance(value, str) else value
    return loaded if isinstance(loaded, dict) else {}
