"""Reading what was applied: every resource (channels, destinations, triggers, templates, journey
drafts) and the audit trail of control-plane changes."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from cairn_control.errors import Invalid, NotFound
from cairn_control.validation import KINDS

MAX_AUDIT = 1000


class ResourceInfo(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    name: str
    status: str
    source: str | None
    updated_at: datetime
    document: dict[str, Any] | None = None


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    at: datetime
    action: str
    kind: str
    name: str
    detail: dict[str, Any]


def _check_kind(kind: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise Invalid(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")


async def list_resources(pool: asyncpg.Pool, kind: str | None = None) -> list[ResourceInfo]:
    _check_kind(kind)
    rows = await pool.fetch(
        "SELECT kind, name, status, source, updated_at FROM resources "
        "WHERE $1::text IS NULL OR kind = $1 ORDER BY kind, name",
        kind,
    )
    return [
        ResourceInfo(
            kind=r["kind"],
            name=r["name"],
            status=r["status"],
            source=r["source"],
            updated_at=r["updated_at"],
        )
        for r in rows
    ]


async def get_resource(pool: asyncpg.Pool, kind: str, name: str) -> ResourceInfo:
    _check_kind(kind)
    r = await pool.fetchrow(
        "SELECT kind, name, status, source, updated_at, document FROM resources "
        "WHERE kind = $1 AND name = $2",
        kind,
        name,
    )
    if r is None:
        raise NotFound(f"{kind} {name!r} does not exist")
    return ResourceInfo(
        kind=r["kind"],
        name=r["name"],
        status=r["status"],
        source=r["source"],
        updated_at=r["updated_at"],
        document=json.loads(r["document"]),
    )


async def audit_trail(
    pool: asyncpg.Pool, *, kind: str | None = None, name: str | None = None, limit: int = 100
) -> list[AuditEntry]:
    """The newest ``limit`` changes (of one resource if given), oldest first."""
    if kind != "WriteKey":
        _check_kind(kind)
    if not 1 <= limit <= MAX_AUDIT:
        raise Invalid(f"limit must be between 1 and {MAX_AUDIT}")
    rows = await pool.fetch(
        "SELECT * FROM (SELECT id, at, action, kind, name, detail FROM control_audit "
        "WHERE ($1::text IS NULL OR kind = $1) AND ($2::text IS NULL OR name = $2) "
        "ORDER BY id DESC LIMIT $3) newest ORDER BY id",
        kind,
        name,
        limit,
    )
    return [
        AuditEntry(
            at=r["at"],
            action=r["action"],
            kind=r["kind"],
            name=r["name"],
            detail=json.loads(r["detail"]),
        )
        for r in rows
    ]
