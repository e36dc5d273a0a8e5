"""``cairn preview``: exactly what one send step would send, for a sample event and profile.

The step's template is rendered with the same function the dispatcher uses
(``cairn_journey.render``), over the same scope (``profile``, ``event``, ``journey``), so the
preview is the message, not an approximation. The address is resolved from ``to`` the way a send
does; a profile without one would be skipped, and the preview says so. ``delivery`` is the
``DeliveryRequested`` the matcher would hand the dispatcher (for destinations, the payload the
dispatcher maps to the provider's API).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from cairn_common.messages import DeliveryRequested
from cairn_control.errors import Invalid, NotFound
from cairn_control.requests import PreviewRequest
from cairn_journey.journey_reader import STEP_KINDS
from cairn_journey.render import Rendered, RenderError, render

PREVIEW_ID = "preview"
DEFAULT_DESTINATION_EVENT = "Journey Step Entered"


class Preview(msgspec.Struct, frozen=True, kw_only=True):
    journey: str
    version: int | None
    """``None``: the current draft."""
    step: str
    channel: str | None
    destination: str | None
    template: str | None
    to: str | None
    address: str | None
    skipped: str | None
    """Why the send would be skipped for this profile (e.g. no address), else ``None``."""
    rendered: Rendered | None
    missing: list[str]
    """Variables the template uses that this sample does not have (they render empty)."""
    delivery: DeliveryRequested
    destination_event: dict[str, Any] | None = None
    """For a destination step: the journey event the destination receives (Segment's journey
    event shape: the triggering event's properties plus the journey's context)."""


def steps_in(definition: Any) -> Iterator[dict[str, Any]]:
    """Every step of a journey document, at any depth of branches."""
    if isinstance(definition, dict):
        if isinstance(definition.get("id"), str) and any(k in definition for k in STEP_KINDS):
            yield definition
        for value in definition.values():
            yield from steps_in(value)
    elif isinstance(definition, list):
        for item in definition:
            yield from steps_in(item)


def resolve(path: str | None, scope: Mapping[str, Any]) -> Any:
    """``profile.email`` / ``event.properties.phone`` / bare ``phone`` (an event property)."""
    if not path:
        return None
    parts = path.split(".")
    if parts[0] not in ("profile", "event"):
        parts = ["event", "properties", *parts]
    value: Any = scope
    for part in parts:
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


async def _definition(conn: asyncpg.Connection, body: PreviewRequest) -> dict[str, Any]:
    if body.version is None:
        raw = await conn.fetchval(
            "SELECT document FROM resources WHERE kind = 'Journey' AND name = $1", body.journey
        )
        if raw is None:
            raise NotFound(f"journey {body.journey!r} does not exist")
    else:
        raw = await conn.fetchval(
            "SELECT definition FROM journey_versions WHERE journey = $1 AND version = $2",
            body.journey,
            body.version,
        )
        if raw is None:
            raise NotFound(f"journey {body.journey!r} has no version {body.version}")
    found: dict[str, Any] = json.loads(raw)
    return found


async def preview_step(pool: asyncpg.Pool, body: PreviewRequest) -> Preview:
    async with pool.acquire() as conn:
        definition = await _definition(conn, body)
        step = next((s for s in steps_in(definition) if s["id"] == body.step), None)
        if step is None:
            raise NotFound(f"journey {body.journey!r} has no step {body.step!r}")
        send = step.get("send")
        if not isinstance(send, dict):
            raise Invalid(f"step {body.step!r} is not a send step; only sends can be previewed")
        destination = None
        if isinstance(send.get("destination"), str):
            raw_destination = await conn.fetchval(
                "SELECT document FROM resources WHERE kind = 'Destination' AND name = $1",
                send["destination"],
            )
            destination = json.loads(raw_destination) if raw_destination else {}
        template_name = send.get("template")
        template: dict[str, Any] | None = None
        if template_name is not None:
            raw = await conn.fetchval(
                "SELECT document FROM resources WHERE kind = 'Template' AND name = $1",
                template_name,
            )
            if raw is None:
                raise NotFound(f"template {template_name!r} (sent by {body.step}) does not exist")
            template = json.loads(raw)
    return build_preview(body, send, template, destination)


def destination_event(
    delivery: DeliveryRequested, destination: Mapping[str, Any]
) -> dict[str, Any]:
    """The event a destination step delivers, as the dispatcher's destination providers build
    it (``cairn_dispatcher.providers``): named by the destination's ``event`` setting."""
    settings = destination.get("options") or destination.get("settings") or {}
    properties = delivery.event.get("properties")
    return {
        "name": str(settings.get("event", DEFAULT_DESTINATION_EVENT)),
        "profile_id": delivery.profile_id,
        "properties": {
            **(properties if isinstance(properties, dict) else {}),
            "journey_name": delivery.journey,
            "journey_version": delivery.version,
            "journey_instance_id": delivery.instance_id,
            "step_id": delivery.step_id,
            "delivery_id": delivery.delivery_id,
            "journey_context": {"triggering_event": delivery.event, "matched_events": {}},
        },
    }


def build_preview(
    body: PreviewRequest,
    send: Mapping[str, Any],
    template: Mapping[str, Any] | None,
    destination: Mapping[str, Any] | None = None,
) -> Preview:
    journey_scope = {
        "name": body.journey,
        "version": body.version,
        "step": body.step,
        "instance_id": PREVIEW_ID,
        "delivery_id": PREVIEW_ID,
    }
    user_id, anonymous_id = body.event.get("userId"), body.event.get("anonymousId")
    profile_id = str(user_id or anonymous_id or PREVIEW_ID)
    ids = {"id": profile_id, "user_id": user_id, "anonymous_id": anonymous_id}
    profile = {**body.profile, **{k: v for k, v in ids.items() if v}}  # as the matcher sends it
    scope = {"profile": profile, "event": body.event, "journey": journey_scope, "steps": {}}
    to = send.get("to")
    address = resolve(to, scope)
    skipped = None
    if to and (address is None or address == ""):
        skipped = f"no address: {to} is not set for this profile"
    rendered = None
    if template is not None:
        try:
            rendered = render(template, scope)
        except RenderError as exc:
            raise Invalid(f"template {send.get('template')!r} cannot render: {exc}") from None
    delivery = DeliveryRequested(
        delivery_id=PREVIEW_ID,
        profile_id=profile_id,
        journey=body.journey,
        version=body.version or 0,
        instance_id=PREVIEW_ID,
        step_id=body.step,
        visit=1,
        requested_at=datetime.now(UTC),
        channel=send.get("channel"),
        destination=send.get("destination"),
        template=send.get("template"),
        to=to,
        address=None if address is None else str(address),
        profile=profile,
        event=dict(body.event),
    )
    return Preview(
        journey=body.journey,
        version=body.version,
        step=body.step,
        channel=send.get("channel"),
        destination=send.get("destination"),
        template=send.get("template"),
        to=to,
        address=delivery.address,
        skipped=skipped,
        rendered=rendered,
        missing=list(rendered.missing) if rendered is not None else [],
        delivery=delivery,
        destination_event=None if destination is None else destination_event(delivery, destination),
    )
