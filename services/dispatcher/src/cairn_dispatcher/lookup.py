"""Where a delivery goes and what it says: cached Channel/Destination/Template documents.

Template precedence, so that what is sent is what the journey was published with:
1. ``DeliveryRequested.template_document`` (the matcher may carry the frozen template);
2. ``journey_versions.templates[<name>]`` (templates frozen into the published version);
3. the current ``resources(kind='Template', name)`` document.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from cairn_common.messages import DeliveryRequested
from cairn_dispatcher.documents import DocumentError, Target, target_from_document
from cairn_dispatcher.repo import Documents

log = structlog.get_logger(__name__)


class Lookup:
    def __init__(self, documents: Documents, ttl: float) -> None:
        self._documents = documents
        self._ttl = ttl
        self._loaded_at = -1e9
        self._targets: dict[tuple[str, str], Target | DocumentError] = {}
        self._templates: dict[str, dict[str, Any]] = {}
        self._frozen: dict[tuple[str, int], dict[str, Any]] = {}

    async def refresh(self) -> None:
        if time.monotonic() - self._loaded_at < self._ttl:
            return
        targets: dict[tuple[str, str], Target | DocumentError] = {}
        templates: dict[str, dict[str, Any]] = {}
        for kind, name, doc in await self._documents.resources(
            ["Channel", "Destination", "Template"]
        ):
            if kind == "Template":
                templates[name] = doc
                continue
            try:
                found: Target | DocumentError = target_from_document(kind, name, doc)
            except (DocumentError, KeyError, TypeError, ValueError) as exc:
                found = (
                    exc
                    if isinstance(exc, DocumentError)
                    else DocumentError(f"{kind}/{name}: {type(exc).__name__}: {exc}")
                )
            targets[(kind, name)] = found
            alias = doc.get("channel") if kind == "Channel" else None
            if isinstance(alias, str):
                targets.setdefault((kind, alias), found)
        self._targets, self._templates = targets, templates
        self._loaded_at = time.monotonic()

    def target(self, req: DeliveryRequested) -> Target:
        if req.channel:
            key = ("Channel", req.channel)
        elif req.destination:
            key = ("Destination", req.destination)
        else:
            raise DocumentError("the delivery names neither a channel nor a destination")
        found = self._targets.get(key)
        if found is None:
            raise DocumentError(f"no {key[0]} document named {key[1]!r} is applied")
        if isinstance(found, DocumentError):
            raise found
        return found

    async def template(self, req: DeliveryRequested) -> dict[str, Any] | None:
        if req.template_document:
            return req.template_document
        if not req.template:
            return None
        key = (req.journey, req.version)
        if key not in self._frozen:
            frozen = await self._documents.version_templates(req.journey, req.version)
            self._frozen[key] = frozen or {}
        doc = self._frozen[key].get(req.template) or self._templates.get(req.template)
        if not isinstance(doc, dict):
            raise DocumentError(f"no Template document named {req.template!r}")
        return doc
