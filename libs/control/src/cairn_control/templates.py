"""Templates' ready/draft status. A journey can only be published when every template it sends
is ``ready``; a template a live journey sends cannot go back to ``draft``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import asyncpg
import msgspec

from cairn_control.errors import Conflict, Invalid, NotFound, ProblemOut
from cairn_control.store import audit
from cairn_control.validation import ParsedDocument, line_of, path_lines, templates_used
from cairn_journey.render import template_problems

TemplateStatus = Literal["draft", "ready"]


class TemplateInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    channel: str | None
    status: str
    updated_at: datetime
    used_by: list[str]
    """Live journeys whose live version sends this template."""
    source: str | None = None
    document: dict[str, Any] | None = None


async def _live_users(conn: asyncpg.Connection) -> dict[str, list[str]]:
    rows = await conn.fetch(
        "SELECT v.journey, v.definition FROM journeys j "
        "JOIN journey_versions v ON v.journey = j.name AND v.version = j.live_version "
        "WHERE j.state = 'live' ORDER BY v.journey"
    )
    users: dict[str, list[str]] = {}
    for r in rows:
        for template in sorted(set(templates_used(json.loads(r["definition"])))):
            users.setdefault(template, []).append(r["journey"])
    return users


async def list_templates(pool: asyncpg.Pool, name: str | None = None) -> list[TemplateInfo]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT name, document, status, updated_at, source FROM resources "
            "WHERE kind = 'Template' AND ($1::text IS NULL OR name = $1) ORDER BY name",
            name,
        )
        users = await _live_users(conn)
    out = []
    for r in rows:
        document = json.loads(r["document"])
        channel = document.get("channel")
        out.append(
            TemplateInfo(
                name=r["name"],
                channel=channel if isinstance(channel, str) else None,
                status=r["status"],
                updated_at=r["updated_at"],
                used_by=users.get(r["name"], []),
                source=r["source"],
                document=document if name is not None else None,
            )
        )
    return out


async def get_template(pool: asyncpg.Pool, name: str) -> TemplateInfo:
    found = await list_templates(pool, name)
    if not found:
        raise NotFound(f"template {name!r} does not exist; apply it first (cairn apply -f FILE)")
    return found[0]


async def set_template_status(
    pool: asyncpg.Pool, name: str, status: TemplateStatus
) -> TemplateInfo:
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT status, document, source, source_text FROM resources "
            "WHERE kind = 'Template' AND name = $1 FOR UPDATE",
            name,
        )
        current = None if row is None else row["status"]
        if row is None:
            raise NotFound(
                f"template {name!r} does not exist; apply it first (cairn apply -f FILE)"
            )
        if status == "draft":
            users = (await _live_users(conn)).get(name, [])
            if users:
                raise Conflict(
                    f"template {name!r} is sent by live journey(s) {', '.join(users)}; "
                    "stop them (cairn stop NAME) before moving it back to draft"
                )
        if status == "ready":
            problems = _render_problems(name, row)
            if problems:
                message = f"template {name!r} cannot be marked ready: {len(problems)} problem(s)"
                raise Invalid(message, problems)
        if current != status:
            await conn.execute(
                "UPDATE resources SET status = $2, updated_at = now() "
                "WHERE kind = 'Template' AND name = $1",
                name,
                status,
            )
            await audit(conn, f"template.{status}", "Template", name)
    return await get_template(pool, name)


def _render_problems(name: str, row: asyncpg.Record) -> list[ProblemOut]:
    return render_problems(name, json.loads(row["document"]), row["source"], row["source_text"])


async def check_ready_templates(
    pool: asyncpg.Pool, documents: Sequence[ParsedDocument]
) -> list[ProblemOut]:
    """A ready template is in use (or about to be): new content for it must render, or the
    sends of live journeys would start failing. Problems of every such template are returned."""
    names = [d.name for d in documents if d.kind == "Template"]
    if not names:
        return []
    ready = {
        r["name"]
        for r in await pool.fetch(
            "SELECT name FROM resources WHERE kind = 'Template' AND status = 'ready' "
            "AND name = ANY($1::text[])",
            names,
        )
    }
    problems: list[ProblemOut] = []
    for d in documents:
        if d.kind == "Template" and d.name in ready:
            problems += render_problems(d.name, d.document, d.source, d.source_text)
    return problems


def render_problems(
    name: str, document: dict[str, Any], source: str | None, source_text: str | None
) -> list[ProblemOut]:
    """What stops a template from rendering (syntax, unknown filters or variables, missing
    fields), each with the line of its field in the file it was applied from."""
    found = template_problems(document)
    lines = path_lines(source_text, "Template", name) if source_text else {}
    problems = []
    for text in found:
        path, _, message = text.partition(": ")
        if not message:
            path, message = "", text
        problems.append(
            ProblemOut(path=path, message=message, source=source, line=line_of(path, lines))
        )
    return problems
