"""Reading journeys: their state, draft, published versions and running instances."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from cairn_control.errors import NotFound
from cairn_control.store import checksum_of, get_draft


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
