"""The journey lifecycle in PostgreSQL: apply drafts, publish frozen versions, stop, list.

Tables: ``resources`` (every applied document; a Journey's draft lives there), ``journeys`` (a
journey's state and live version), ``journey_versions`` (frozen, a trigger refuses any UPDATE) from
0001, ``control_audit`` from 0003. Every change is one transaction; publish and stop end with
``NOTIFY cairn_journeys`` (delivered at commit) so matchers reload without a restart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import asyncpg
import msgspec
import structlog

from cairn_control.errors import Invalid, NotFound
from cairn_control.validation import (
    ParsedDocument,
    ResourceSet,
    StoredResource,
    check_journey_draft,
)

log = structlog.get_logger(__name__)

JOURNEYS_CHANNEL = "cairn_journeys"

ApplyOutcome = Literal["created", "updated", "unchanged"]
PublishOutcome = Literal["published", "unchanged", "resumed"]


class Applied(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    name: str
    outcome: ApplyOutcome
    source: str | None = None


class Published(msgspec.Struct, frozen=True, kw_only=True):
    journey: str
    version: int
    outcome: PublishOutcome
    checksum: str
    message: str


class JourneySummary(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    state: str
    live_version: int | None
    versions: int
    draft_changed: bool
    """The draft differs from the latest published version (``cairn publish`` would make N+1)."""
    active_instances: int | None
    updated_at: datetime
    title: str | None = None
    stop_mode: str | None = None
    stopped_at: datetime | None = None


class VersionInfo(msgspec.Struct, frozen=True, kw_only=True):
    journey: str
    version: int
    checksum: str
    published_at: datetime
    live: bool
    active_instances: int | None = None
    definition: dict[str, Any] | None = None


def checksum_of(document: dict[str, Any]) -> str:
    """Stable over key order and whitespace: what the document says, not how it was written."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


async def audit(conn: asyncpg.Connection, action: str, kind: str, name: str, **detail: Any) -> None:
    await conn.execute(
        "INSERT INTO control_audit (action, kind, name, detail) VALUES ($1, $2, $3, $4::jsonb)",
        action,
        kind,
        name,
        json.dumps(detail, default=str),
    )


async def notify_journeys(conn: asyncpg.Connection, **payload: Any) -> None:
    await conn.execute("SELECT pg_notify($1, $2)", JOURNEYS_CHANNEL, json.dumps(payload))


# ---- apply ---------------------------------------------------------------------------------------


async def apply_documents(pool: asyncpg.Pool, documents: Sequence[ParsedDocument]) -> list[Applied]:
    """Create or update every document as a draft, all or nothing, in one transaction.

    A document equal to what is stored is ``unchanged`` (only its source is refreshed). Applying a
    Journey never changes what is live: the draft waits for ``publish``. A Template keeps its
    ready/draft status across content changes (status is an operator's decision, not content).
    """
    seen: set[tuple[str, str]] = set()
    for doc in documents:
        if (doc.kind, doc.name) in seen:
            raise Invalid(
                f"{doc.kind} {doc.name!r} appears twice in one apply; each resource once, please"
            )
        seen.add((doc.kind, doc.name))
    results: list[Applied] = []
    async with pool.acquire() as conn, conn.transaction():
        for doc in documents:
            outcome = await _apply_one(conn, doc)
            results.append(
                Applied(kind=doc.kind, name=doc.name, outcome=outcome, source=doc.source)
            )
            if outcome != "unchanged":
                await audit(conn, "apply", doc.kind, doc.name, outcome=outcome, source=doc.source)
    return results


async def _apply_one(conn: asyncpg.Connection, doc: ParsedDocument) -> ApplyOutcome:
    body = json.dumps(doc.document)
    row = await conn.fetchrow(
        "SELECT document = $3::jsonb AS same FROM resources WHERE kind = $1 AND name = $2 "
        "FOR UPDATE",
        doc.kind,
        doc.name,
        body,
    )
    if row is None:
        await conn.execute(
            "INSERT INTO resources (kind, name, document, source, source_text) "
            "VALUES ($1, $2, $3::jsonb, $4, $5)",
            doc.kind,
            doc.name,
            body,
            doc.source,
            doc.source_text,
        )
        outcome: ApplyOutcome = "created"
    elif row["same"]:
        await conn.execute(
            "UPDATE resources SET source = $3, source_text = $4 WHERE kind = $1 AND name = $2",
            doc.kind,
            doc.name,
            doc.source,
            doc.source_text,
        )
        return "unchanged"
    else:
        await conn.execute(
            "UPDATE resources SET document = $3::jsonb, source = $4, source_text = $5, "
            "updated_at = now() WHERE kind = $1 AND name = $2",
            doc.kind,
            doc.name,
            body,
            doc.source,
            doc.source_text,
        )
        outcome = "updated"
    if doc.kind == "Journey":
        await conn.execute(
            "INSERT INTO journeys (name) VALUES ($1) "
            "ON CONFLICT (name) DO UPDATE SET updated_at = now()",
            doc.name,
        )
    return outcome


# ---- reading resources ---------------------------------------------------------------------------


async def load_stored(conn: asyncpg.Connection) -> list[StoredResource]:
    """Every stored resource except journey drafts."""
    rows = await conn.fetch(
        "SELECT kind, name, document, source, source_text, status FROM resources "
        "WHERE kind <> 'Journey'"
    )
    return [_stored(r) for r in rows]


async def load_resources(conn: asyncpg.Connection) -> ResourceSet:
    return ResourceSet.of(await load_stored(conn))


def _stored(row: asyncpg.Record) -> StoredResource:
    return StoredResource(
        kind=row["kind"],
        name=row["name"],
        document=json.loads(row["document"]),
        source=row["source"],
        source_text=row["source_text"],
        status=row["status"],
    )


async def get_draft(conn: asyncpg.Connection, name: str) -> StoredResource:
    row = await conn.fetchrow(
        "SELECT kind, name, document, source, source_text, status FROM resources "
        "WHERE kind = 'Journey' AND name = $1",
        name,
    )
    if row is None:
        raise NotFound(f"journey {name!r} does not exist; apply it first (cairn apply -f FILE)")
    return _stored(row)


# ---- publish -------------------------------------------------------------------------------------


async def publish(pool: asyncpg.Pool, name: str) -> Published:
    """Validate the draft against the stored templates, triggers, channels and destinations and
    freeze it as version N+1. An unchanged draft is not frozen twice: if it is live, nothing
    happens; if the journey was stopped, it goes live again on that same version."""
    async with pool.acquire() as conn, conn.transaction():
        draft = await get_draft(conn, name)
        journey = await conn.fetchrow(
            "SELECT state, live_version FROM journeys WHERE name = $1 FOR UPDATE", name
        )
        assert journey is not None  # apply creates the row with the draft
        problems = check_journey_draft(draft, await load_resources(conn))
        if problems:
            raise Invalid(
                f"journey {name!r} cannot be published: {len(problems)} problem(s)", problems
            )
        checksum = checksum_of(draft.document)
        latest = await conn.fetchrow(
            "SELECT version, checksum FROM journey_versions WHERE journey = $1 "
            "ORDER BY version DESC LIMIT 1",
            name,
        )
        if latest is not None and latest["checksum"] == checksum:
            version = int(latest["version"])
            if journey["state"] == "live" and journey["live_version"] == version:
                return Published(
                    journey=name,
                    version=version,
                    outcome="unchanged",
                    checksum=checksum,
                    message=f"{name} v{version} is already live and the draft is unchanged",
                )
            outcome: PublishOutcome = "resumed"
            message = f"{name} v{version} is live again (the draft is unchanged)"
        else:
            version = 1 if latest is None else int(latest["version"]) + 1
            await conn.execute(
                "INSERT INTO journey_versions (journey, version, definition, checksum) "
                "VALUES ($1, $2, $3::jsonb, $4)",
                name,
                version,
                json.dumps(draft.document),
                checksum,
            )
            outcome = "published"
            message = f"{name} v{version} published; new entries go to v{version}"
            if latest is not None:
                message += ", running instances finish on the version they started on"
        await conn.execute(
            "UPDATE journeys SET state = 'live', live_version = $2, stop_mode = NULL, "
            "stopped_at = NULL, updated_at = now() WHERE name = $1",
            name,
            version,
        )
        await audit(conn, "publish", "Journey", name, version=version, outcome=outcome)
        await notify_journeys(conn, journey=name, action="publish", version=version)
    log.info("journey published", journey=name, version=version, outcome=outcome)
    return Published(
        journey=name, version=version, outcome=outcome, checksum=checksum, message=message
    )


# ---- journeys and versions -----------------------------------------------------------------------


async def _active_counts(
    conn: asyncpg.Connection, name: str | None = None
) -> dict[tuple[str, int], int] | None:
    """Active instances per (journey, version), or None when the matcher's table is not there."""
    try:
        rows = await conn.fetch(
            "SELECT journey, version, count(*) AS n FROM journey_instances "
            "WHERE status = 'active' AND ($1::text IS NULL OR journey = $1) "
            "GROUP BY journey, version",
            name,
        )
    except asyncpg.UndefinedTableError:
        return None
    return {(r["journey"], r["version"]): int(r["n"]) for r in rows}


async def list_journeys(pool: asyncpg.Pool, name: str | None = None) -> list[JourneySummary]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            """SELECT j.name, j.state, j.live_version, j.stop_mode, j.stopped_at, j.updated_at,
                      r.document->>'title' AS title,
                      (SELECT count(*) FROM journey_versions v
                        WHERE v.journey = j.name) AS versions,
                      (SELECT v.checksum FROM journey_versions v WHERE v.journey = j.name
                        ORDER BY v.version DESC LIMIT 1) AS latest_checksum,
                      r.document AS draft
               FROM journeys j
               LEFT JOIN resources r ON r.kind = 'Journey' AND r.name = j.name
               WHERE $1::text IS NULL OR j.name = $1
               ORDER BY j.name""",
            name,
        )
        counts = await _active_counts(conn, name)
    summaries = []
    for r in rows:
        draft = json.loads(r["draft"]) if r["draft"] is not None else None
        active = None
        if counts is not None:
            active = sum(n for (j, _), n in counts.items() if j == r["name"])
        summaries.append(
            JourneySummary(
                name=r["name"],
                title=r["title"],
                state=r["state"],
                live_version=r["live_version"],
                versions=int(r["versions"]),
                draft_changed=draft is not None and checksum_of(draft) != r["latest_checksum"],
                active_instances=active,
                updated_at=r["updated_at"],
                stop_mode=r["stop_mode"],
                stopped_at=r["stopped_at"],
            )
        )
    return summaries


async def get_journey(pool: asyncpg.Pool, name: str) -> tuple[JourneySummary, dict[str, Any]]:
    """The journey's summary and its current draft document."""
    found = await list_journeys(pool, name)
    if not found:
        raise NotFound(f"journey {name!r} does not exist")
    async with pool.acquire() as conn:
        draft = await get_draft(conn, name)
    return found[0], draft.document


async def list_versions(pool: asyncpg.Pool, name: str) -> list[VersionInfo]:
    async with pool.acquire() as conn:
        live = await conn.fetchval("SELECT live_version FROM journeys WHERE name = $1", name)
        exists = await conn.fetchval("SELECT true FROM journeys WHERE name = $1", name)
        if not exists:
            raise NotFound(f"journey {name!r} does not exist")
        rows = await conn.fetch(
            "SELECT version, checksum, published_at FROM journey_versions WHERE journey = $1 "
            "ORDER BY version",
            name,
        )
        counts = await _active_counts(conn, name)
    return [
        VersionInfo(
            journey=name,
            version=r["version"],
            checksum=r["checksum"],
            published_at=r["published_at"],
            live=r["version"] == live,
            active_instances=None if counts is None else counts.get((name, r["version"]), 0),
        )
        for r in rows
    ]


async def get_version(pool: asyncpg.Pool, name: str, version: int) -> VersionInfo:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT v.version, v.checksum, v.published_at, v.definition, "
            "       j.live_version = v.version AS live "
            "FROM journey_versions v JOIN journeys j ON j.name = v.journey "
            "WHERE v.journey = $1 AND v.version = $2",
            name,
            version,
        )
        counts = await _active_counts(conn, name)
    if row is None:
        raise NotFound(f"journey {name!r} has no version {version}")
    return VersionInfo(
        journey=name,
        version=row["version"],
        checksum=row["checksum"],
        published_at=row["published_at"],
        live=bool(row["live"]),
        active_instances=None if counts is None else counts.get((name, version), 0),
        definition=json.loads(row["definition"]),
    )
