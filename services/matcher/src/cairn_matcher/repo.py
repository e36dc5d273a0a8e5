"""The matcher's SQL. Every write takes a whole batch (``unnest``); the rows nearly every commit
writes go in one statement (``write_batch``), the rarer ones (traits, ended instances, cancelled
timers, delivery events) in one statement per table, all inside the one transaction of
``Engine.apply``.

Lock order: the engine runs several committers at once, and the rows they could share (the
analytics counters of ``journey_stats``, when two replicas' committers meet in one shard; the
scheduler shares ``timers``) would deadlock if two transactions took them in different orders,
each one costing PostgreSQL's ``deadlock_timeout``. So every multi-row write gets its rows through
``_columns``, which sorts them by the table's key (``INSERT … SELECT FROM unnest`` and
``ON CONFLICT`` handle rows in array order), statements that lock rows they did not insert lock
them in key order in a sorted subquery, and the commit runs the statements in one fixed order
(``BatchWrites.commit``). ``journey_stats`` is written by two statements, interpreter counters
first, then delivery counters; their counter names never meet (only the latter start with
``delivery:`` or ``reason:``), so the pair keeps one order too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from cairn_common.failures import PermanentInputError

_json = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder(dict[str, Any])


class StoredProfile(msgspec.Struct, frozen=True):
    state: bytes | None
    traits: dict[str, Any] | None


async def load_profiles(
    conn: asyncpg.Connection, profile_ids: Sequence[str]
) -> dict[str, StoredProfile]:
    """Each profile's interpreter state and its traits (``profiles`` is the truth for traits:
    identify calls that no journey needed updated only it)."""
    rows = await conn.fetch(
        """SELECT id, s.state, p.traits::text AS traits
           FROM unnest($1::text[]) AS id
           LEFT JOIN profile_states s ON s.profile_id = id
           LEFT JOIN profiles p ON p.profile_id = id""",
        profile_ids,
    )
    return {
        r["id"]: StoredProfile(
            r["state"], _json_decoder.decode(r["traits"]) if r["traits"] is not None else None
        )
        for r in rows
    }


async def merge_traits(
    conn: asyncpg.Connection, traits: dict[str, dict[str, Any]], *, budget: int
) -> None:
    """Identify traits into ``profiles`` (later keys win), readable by operators and services.

    Traits only grow, and every delivery request carries them, so a profile's traits have a
    budget: ``budget`` bytes of JSON. A merge that would exceed it raises
    ``PermanentInputError`` naming the profile (the transaction rolls back; the engine then
    dead-letters the input that did it)."""
    if not traits:
        return
    over = await conn.fetch(
        """WITH merged AS (
               INSERT INTO profiles (profile_id, traits)
               SELECT p, t::jsonb FROM unnest($1::text[], $2::text[]) AS x(p, t)
               ON CONFLICT (profile_id) DO UPDATE
               SET traits = profiles.traits || EXCLUDED.traits, updated_at = now()
               RETURNING profile_id, octet_length(traits::text) AS size)
           SELECT profile_id, size FROM merged WHERE size > $3""",
        *_columns(((p, _json.encode(t).decode()) for p, t in traits.items()), 2, key=_first),
        budget,
    )
    if over:
        sizes = ", ".join(f"{r['profile_id']!r} to {r['size']:,} bytes" for r in over[:5])
        raise PermanentInputError(
            f"traits over the profile budget of {budget:,} bytes (CAIRN_MAX_PROFILE_TRAITS_BYTES):"
            f" this identify would grow {sizes}"
        )


async def unset_traits(conn: asyncpg.Connection, unset: dict[str, set[str]]) -> None:
    """Remove traits an ``update`` step unset (profiles in key order, as every writer)."""
    rows = [(p, _json.encode(sorted(names)).decode()) for p, names in unset.items() if names]
    if not rows:
        return
    await conn.execute(
        """UPDATE profiles AS pr
           SET traits = pr.traits - ARRAY(SELECT jsonb_array_elements_text(x.names::jsonb)),
               updated_at = now()
           FROM unnest($1::text[], $2::text[]) AS x(p, names)
           WHERE pr.profile_id = x.p""",
        *_columns(rows, 2, key=_first),
    )


TimerRow = tuple[str, str, int, str, str, str, datetime, str | None]
"""timer_id, profile_id, partition, instance_id, step_id, kind, due_at, traceparent"""


async def delete_timers(conn: asyncpg.Connection, timer_ids: Sequence[str]) -> None:
    """The scheduler locks timers too (claims and deletes fired ones): lock in key order."""
    if timer_ids:
        await conn.execute(
            """DELETE FROM timers AS t
               USING (SELECT timer_id FROM timers WHERE timer_id = ANY($1)
                      ORDER BY timer_id FOR UPDATE) AS doomed
               WHERE t.timer_id = doomed.timer_id""",
            sorted(timer_ids),
        )


async def wake_scheduler(conn: asyncpg.Connection, earliest: datetime) -> None:
    """Delivered at commit: a scheduler claims a near timer at once instead of at its next scan."""
    await conn.execute("SELECT pg_notify('cairn_timers', $1)", earliest.isoformat())


OutboxRow = tuple[str, str, bytes, str | None]
"""subject, msg_id, payload, traceparent (of the input that emitted it)"""


DeliveryEventRow = tuple[str, str, str, str, str | None, str | None, datetime, int | None]
"""delivery_id, kind, instance_id, step_id, channel, reason, at, held_ms (how long a rate limit
held a sent delivery back)"""


async def add_delivery_events(
    conn: asyncpg.Connection, rows: Sequence[DeliveryEventRow], *, shard: int = 0
) -> None:
    """Once per (delivery, kind): a redelivered result or a second open changes nothing.

    Each row actually inserted also increments the analytics counters of its journey, version
    and step (``delivery:<kind>``, and ``reason:<kind>:<reason>`` for skipped, suppressed and
    dropped; for a send a rate limit held back ``delivery:rate_limited`` and the milliseconds,
    ``rate_limit:held_ms``) in the hour of its ``at`` and in ``shard`` (``add_stats``), so the
    stats read only ``journey_stats``."""
    if rows:
        await conn.execute(
            """WITH added AS (
                   INSERT INTO delivery_events
                       (delivery_id, kind, instance_id, step_id, channel, reason, at, held_ms)
                   SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                        $5::text[], $6::text[], $7::timestamptz[], $8::bigint[])
                   ON CONFLICT (delivery_id, kind) DO NOTHING
                   RETURNING instance_id, step_id, kind, reason, at, held_ms
               ), counted AS (
                   SELECT instance_id, step_id, 'delivery:' || kind AS counter, at, 1::bigint AS n
                   FROM added
                   UNION ALL
                   SELECT instance_id, step_id,
                          'reason:' || kind || ':' || coalesce(reason, 'unknown'), at, 1
                   FROM added WHERE kind IN ('skipped', 'suppressed', 'dropped')
                   UNION ALL
                   SELECT instance_id, step_id, 'delivery:rate_limited', at, 1
                   FROM added WHERE held_ms IS NOT NULL
                   UNION ALL
                   SELECT instance_id, step_id, 'rate_limit:held_ms', at, held_ms
                   FROM added WHERE held_ms IS NOT NULL
               )
               INSERT INTO journey_stats (journey, version, step_id, counter, hour, shard, n)
               SELECT ji.journey, ji.version, c.step_id, c.counter,
                      date_trunc('hour', c.at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', $9::smallint,
                      sum(c.n)
               FROM counted c JOIN journey_instances ji ON ji.instance_id = c.instance_id
               GROUP BY 1, 2, 3, 4, 5
               ORDER BY 1, 2, 3, 4, 5
               ON CONFLICT (journey, version, step_id, counter, hour, shard)
               DO UPDATE SET n = journey_stats.n + EXCLUDED.n""",
            *_columns(rows, 8, key=lambda r: (r[0], r[1])),
            shard,
        )


InstanceStart = tuple[str, str, int, str, str | None, datetime]
"""instance_id, journey, version, profile_id, unique_value, started_at"""


InstanceEnd = tuple[str, str, str | None, datetime]
"""instance_id, status ('completed' | 'exited'), exit_reason, ended_at"""


async def end_instances(conn: asyncpg.Connection, rows: Sequence[InstanceEnd]) -> None:
    if rows:
        await conn.execute(
            """UPDATE journey_instances AS ji
               SET status = t.s, exit_reason = t.r, ended_at = t.e
               FROM (SELECT instance_id FROM journey_instances WHERE instance_id = ANY($1)
                     ORDER BY instance_id FOR NO KEY UPDATE) AS locked,
                    unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS t(i, s, r, e)
               WHERE ji.instance_id = locked.instance_id AND ji.instance_id = t.i""",
            *_columns(rows, 4, key=_first),
        )


async def convert_instances(conn: asyncpg.Connection, rows: Sequence[tuple[str, datetime]]) -> None:
    if rows:
        await conn.execute(
            """UPDATE journey_instances AS ji SET converted_at = t.c
               FROM (SELECT instance_id FROM journey_instances WHERE instance_id = ANY($1)
                     ORDER BY instance_id FOR NO KEY UPDATE) AS locked,
                    unnest($1::text[], $2::timestamptz[]) AS t(i, c)
               WHERE ji.instance_id = locked.instance_id AND ji.instance_id = t.i
                 AND ji.converted_at IS NULL""",
            *_columns(rows, 2, key=_first),
        )


StatKey = tuple[str, int, str, str, datetime]
"""journey, version, step_id, counter, hour"""


StateRow = tuple[str, int, bytes]
"""profile_id, partition, encoded state"""


class BatchRows(msgspec.Struct):
    """The rows nearly every commit writes, written by ``write_batch`` in one statement."""

    states: Sequence[StateRow] = ()
    started: Sequence[InstanceStart] = ()
    timers: Sequence[TimerRow] = ()
    applied: dict[int, int] = msgspec.field(default_factory=dict)
    """partition -> the INPUTS stream sequence applied last (rows ``fence_many`` locked)."""
    outbox: Sequence[OutboxRow] = ()
    stats: dict[StatKey, int] = msgspec.field(default_factory=dict)


WRITE_BATCH = """
WITH saved AS (
    INSERT INTO profile_states (profile_id, partition, state)
    SELECT * FROM unnest($1::text[], $2::int[], $3::bytea[])
    ON CONFLICT (profile_id) DO UPDATE SET state = EXCLUDED.state, updated_at = now()
), started AS (
    INSERT INTO journey_instances
        (instance_id, journey, version, profile_id, unique_value, status, started_at)
    SELECT i, j, v, p, u, 'active', s
    FROM unnest($4::text[], $5::text[], $6::int[], $7::text[], $8::text[], $9::timestamptz[])
        AS t(i, j, v, p, u, s)
    ON CONFLICT (instance_id) DO NOTHING
), timers_set AS (
    INSERT INTO timers
        (timer_id, profile_id, partition, instance_id, step_id, kind, due_at, traceparent)
    SELECT * FROM unnest($10::text[], $11::text[], $12::int[], $13::text[], $14::text[],
                         $15::text[], $16::timestamptz[], $17::text[])
    ON CONFLICT (timer_id) DO NOTHING
), applied AS (
    UPDATE partition_leases AS pl SET last_applied_seq = t.s
    FROM unnest($18::int[], $19::bigint[]) AS t(p, s) WHERE pl.partition = t.p
), counted AS (
    INSERT INTO journey_stats (journey, version, step_id, counter, hour, shard, n)
    SELECT j, v, s, c, h, $26::smallint, n
    FROM unnest($20::text[], $21::int[], $22::text[], $23::text[], $24::timestamptz[],
                $25::bigint[]) AS t(j, v, s, c, h, n)
    ON CONFLICT (journey, version, step_id, counter, hour, shard)
    DO UPDATE SET n = journey_stats.n + EXCLUDED.n
)
INSERT INTO outbox (subject, msg_id, payload, traceparent)
SELECT * FROM unnest($27::text[], $28::text[], $29::bytea[], $30::text[])
ON CONFLICT (msg_id) DO NOTHING
RETURNING id, msg_id
"""


async def write_batch(
    conn: asyncpg.Connection, rows: BatchRows, *, shard: int = 0
) -> list[tuple[int, str, str, bytes, str | None]]:
    """Profile states, started instances, timers set, each partition's applied sequence, the
    interpreter's counters (added to ``shard``: concurrent committers each write their own, so
    they do not queue on one another's row locks; the stats sum the shards) and the outbox, in
    ONE statement: a round trip per table was most of a commit's time. Returns the new outbox
    rows (id, subject, msg_id, payload, traceparent).

    Its parts touch different tables and never each other's rows (an instance ended or a timer
    cancelled in the same batch is written by the statements that follow it in the
    transaction, which see these rows), so the order PostgreSQL runs them in does not matter;
    each part takes its rows in key order. The outbox keeps the order of emission."""
    stats = [(*key, n) for key, n in rows.stats.items()]
    result = await conn.fetch(
        WRITE_BATCH,
        *_columns(rows.states, 3, key=_first),
        *_columns(rows.started, 6, key=_first),
        *_columns(rows.timers, 8, key=_first),
        *_columns(rows.applied.items(), 2, key=_first),
        *_columns(stats, 6, key=lambda r: r[:5]),
        shard,
        *_columns(rows.outbox, 4, key=_emitted),
    )
    sent = {row[1]: row for row in rows.outbox}  # the rows' ids come back, not their payloads
    return [(r["id"], *sent[r["msg_id"]]) for r in result]


async def last_applied(conn: asyncpg.Connection, partition: int) -> int:
    seq: int | None = await conn.fetchval(
        "SELECT last_applied_seq FROM partition_leases WHERE partition = $1", partition
    )
    return seq or 0


async def published_journeys(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every published version (running instances may need any), with its journey's state."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT v.journey, v.version, v.definition::text AS definition,
                  j.state, j.live_version, v.published_at
           FROM journey_versions v JOIN journeys j ON j.name = v.journey
           ORDER BY v.journey, v.version"""
    )
    return rows


async def split_winners(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every decided experiment: (journey, version, step_id, path)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT journey, version, step_id, path FROM split_decisions"
    )
    return rows


async def split_counters(
    conn: asyncpg.Connection, journey: str, version: int, step_id: str
) -> dict[str, int]:
    """A split step's counters, summed over hours and shards."""
    rows = await conn.fetch(
        "SELECT counter, sum(n)::bigint AS n FROM journey_stats "
        "WHERE journey = $1 AND version = $2 AND step_id = $3 GROUP BY counter",
        journey,
        version,
        step_id,
    )
    return {r["counter"]: int(r["n"]) for r in rows}


async def record_winner(
    conn: asyncpg.Connection,
    *,
    journey: str,
    version: int,
    step_id: str,
    path: int,
    path_name: str,
    reason: str,
    figures: list[dict[str, Any]],
) -> bool:
    """Record a split's winner once (a decision never changes); wake every matcher's catalogue.
    ``False`` when another replica decided first."""
    async with conn.transaction():
        inserted = await conn.fetchval(
            """INSERT INTO split_decisions
                   (journey, version, step_id, path, path_name, reason, figures)
               VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
               ON CONFLICT DO NOTHING RETURNING true""",
            journey,
            version,
            step_id,
            path,
            path_name,
            reason,
            msgspec.json.encode(figures).decode(),
        )
        if inserted:
            await conn.execute("SELECT pg_notify('cairn_journeys', 'winner')")
    return bool(inserted)


def _first(row: Sequence[Any]) -> Any:
    return row[0]


def _emitted(row: Sequence[Any]) -> Any:
    """Outbox rows keep the order they were emitted in (the relay publishes by ``id``): their
    keys are per input, never shared between committers, and the partition's lease row, locked
    first by every commit, serializes the writers of one partition."""
    return 0


def _columns(
    rows: Iterable[Sequence[Any]], width: int, *, key: Callable[[Sequence[Any]], Any]
) -> list[list[Any]]:
    """``rows`` as ``width`` column arrays for ``unnest``, sorted by ``key``: the order in which
    the statement locks the rows (see the module docstring)."""
    cols: list[list[Any]] = [[] for _ in range(width)]
    for row in sorted(rows, key=key):
        for i, value in enumerate(row):
            cols[i].append(value)
    return cols
