"""Destinations in their real request formats, each receiving the journey's context.

The event sent is named by ``settings.event`` (default ``Journey Step Entered``) and carries
journey, version, step, delivery id and the triggering event's properties, as Segment's journey
events do.
"""

from __future__ import annotations

from typing import Any

from cairn_dispatcher.providers.base import Job, path_segment
from cairn_dispatcher.providers.http import HttpProvider, HttpRequest

DEFAULT_EVENT = "Journey Step Entered"


def _properties(job: Job) -> dict[str, Any]:
    trigger = job.request.event
    props = trigger.get("properties") if isinstance(trigger, dict) else None
    return {**(props if isinstance(props, dict) else {}), **job.journey_context()}


class Braze(HttpProvider):
    """``POST /users/track`` with a REST API key; ``external_id`` is the profile id."""

    name = "braze"

    async def build(self, job: Job) -> HttpRequest:
        event = {
            "external_id": job.request.profile_id,
            "name": str(self.target.setting("event", DEFAULT_EVENT)),
            "time": job.request.requested_at.isoformat(),
            "properties": _properties(job),
        }
        return HttpRequest(
            method="POST",
            url=f"{self.base_url('https://rest.iad-01.braze.com')}/users/track",
            json={"events": [event]},
            headers={"Authorization": f"Bearer {self.target.secret('api_key')}"},
        )


class CustomerIo(HttpProvider):
    """Track API ``POST /api/v1/customers/{id}/events``, HTTP Basic site id + API key; the
    event ``id`` is the delivery id, which Customer.io uses to drop repeats."""

    name = "customerio"

    async def build(self, job: Job) -> HttpRequest:
        site_id = str(self.target.require("site_id"))
        base = self.base_url("https://track.customer.io")
        customer = path_segment("profile id", job.request.profile_id)
        return HttpRequest(
            method="POST",
            url=f"{base}/api/v1/customers/{customer}/events",
            json={
                "name": str(self.target.setting("event", DEFAULT_EVENT)),
                "id": job.idempotency_key,
                "timestamp": int(job.request.requested_at.timestamp()),
                "data": _properties(job),
            },
            auth=(site_id, self.target.secret("api_key") or ""),
        )


class Iterable(HttpProvider):
    """``POST /api/events/track`` with ``Api-Key``; the event ``id`` is the delivery id, so a
    repeated send updates the same event instead of adding one."""

    name = "iterable"

    async def build(self, job: Job) -> HttpRequest:
        body: dict[str, Any] = {
            "id": job.idempotency_key,
            "userId": job.request.profile_id,
            "eventName": str(self.target.setting("event", DEFAULT_EVENT)),
            "createdAt": int(job.request.requested_at.timestamp()),
            "dataFields": _properties(job),
        }
        if job.address and "@" in job.address:
            body["email"] = job.address
        return HttpRequest(
            method="POST",
            url=f"{self.base_url('https://api.iterable.com')}/api/events/track",
            json=body,
            headers={"Api-Key": self.target.secret("api_key") or ""},
        )
