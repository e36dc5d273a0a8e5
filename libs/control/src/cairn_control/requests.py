"""Request and response bodies of the admin API (their JSON Schemas go into /openapi.json)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from cairn_control.errors import ProblemOut
from cairn_control.journeys import JourneySummary, VersionInfo
from cairn_control.keys import WriteKey
from cairn_control.resources import AuditEntry, ResourceInfo
from cairn_control.store import Applied
from cairn_control.templates import TemplateInfo


class DocumentIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One file's content (``text``: YAML or JSON, one or more documents) and its name for error
    messages (``source``); or one document as a JSON object (``document``)."""

    source: str | None = None
    text: str | None = None
    document: dict[str, Any] | None = None


class ApplyRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    documents: list[DocumentIn]


class AppliedList(msgspec.Struct, frozen=True, kw_only=True):
    applied: list[Applied]
    warnings: list[ProblemOut] = msgspec.field(default_factory=list)
    """What would stop the applied journeys from publishing now (missing templates, channels...);
    applied anyway: drafts may be written before what they use."""


class DocumentRef(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    name: str
    source: str | None = None


class ValidateResponse(msgspec.Struct, frozen=True, kw_only=True):
    valid: bool
    problems: list[ProblemOut]
    documents: list[DocumentRef]


class JourneyList(msgspec.Struct, frozen=True, kw_only=True):
    journeys: list[JourneySummary]


class JourneyDetail(msgspec.Struct, frozen=True, kw_only=True):
    journey: JourneySummary
    draft: dict[str, Any]


class VersionList(msgspec.Struct, frozen=True, kw_only=True):
    versions: list[VersionInfo]


class StopRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    mode: Literal["drain", "exit_all"] = "drain"


class TemplateList(msgspec.Struct, frozen=True, kw_only=True):
    templates: list[TemplateInfo]


class CreateKeyRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    rate_limit: int | None = None
    """Events per second; omitted = unlimited."""


class KeyList(msgspec.Struct, frozen=True, kw_only=True):
    write_keys: list[WriteKey]


class PreviewRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Render what step ``step`` of ``journey`` would send for a sample event and profile.

    ``version`` picks a published version; omitted = the current draft."""

    journey: str
    step: str
    event: dict[str, Any] = msgspec.field(default_factory=dict)
    profile: dict[str, Any] = msgspec.field(default_factory=dict)
    version: int | None = None


class ResourceList(msgspec.Struct, frozen=True, kw_only=True):
    resources: list[ResourceInfo]


class AuditList(msgspec.Struct, frozen=True, kw_only=True):
    changes: list[AuditEntry]


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    message: str
    problems: list[ProblemOut] = msgspec.field(default_factory=list)
