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
    templates_used,
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
    dry_run: bool = False
    """Only checked: nothing was stored (``outcome`` says what a real publish would do)."""


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


async def publish(pool: asyncpg.Pool, name: str, *, dry_run: bool = False) -> Published:
    """Validate the draft against the stored templates, triggers, channels and destinations and
    freeze it as version N+1. An unchanged draft is not frozen twice: if it is live, nothing
    happens; if the journey was stopped, it goes live again on that same version. ``dry_run``
    only checks and says what a publish would do."""
    async with pool.acquire() as conn, conn.transaction():
        draft = await get_draft(conn, name)
        journey = await conn.fetchrow(
            "SELECT state, live_version FROM journeys WHERE name = $1 FOR UPDATE", name
        )
        assert journey is not None  # apply creates the row with the draft
        stored = await load_stored(conn)
        problems = check_journey_draft(draft, ResourceSet.of(stored))
        if problems:
            raise Invalid(
                f"journey {name!r} cannot be published: {len(problems)} problem(s)", problems
            )
        # The templates are frozen with the version: what was published is what is sent, even if
        # a template is edited later (a changed template makes the next publish a new version).
        used = set(templates_used(draft.document))
        templates = {r.name: r.document for r in stored if r.kind == "Template" and r.name in used}
        checksum = checksum_of({"journey": draft.document, "templates": templates})
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
                    dry_run=dry_run,
                )
            outcome: PublishOutcome = "resumed"
            message = f"{name} v{version} is live again (the draft is unchanged)"
        else:
            version = 1 if latest is None else int(latest["version"]) + 1
            outcome = "published"
        if dry_run:
            return Published(
                journey=name,
                version=version,
                outcome=outcome,
                checksum=checksum,
                message=f"{name}: the draft passes every check; publishing would "
                + ("make it live again" if outcome == "resumed" else f"freeze it as v{version}"),
                dry_run=True,
            )
        if outcome == "published":
            await conn.execute(
                "INSERT INTO journey_versions (journey, version, definition, checksum, templates) "
                "VALUES ($1, $2, $3::jsonb, $4, $5::jsonb)",
                name,
                version,
                json.dumps(draft.document),
                checksum,
                json.dumps(templates),
            )
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
