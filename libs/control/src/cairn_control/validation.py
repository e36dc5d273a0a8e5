"""The bridge to the journey language (``cairn_journey``): parse documents, check a draft.

Documents arrive as text (a file's content and its name) so every problem can name the file and
line. What is stored is the parsed document in its canonical form (``msgspec.to_builtins`` of the
model struct, which parses back to the same struct), plus the text it came from, so publishing a
draft later still reports problems with the line the operator wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from cairn_control.errors import ProblemOut
from cairn_journey.documents import parse_text
from cairn_journey.model import Channel, Destination, Journey, Template, Trigger
from cairn_journey.validate import Limits, check_publishable

KINDS = ("Journey", "Template", "Trigger", "Channel", "Destination")


class ParsedDocument(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    name: str
    document: dict[str, Any]
    source: str
    source_text: str


class StoredResource(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    name: str
    document: dict[str, Any]
    source: str | None
    source_text: str | None
    status: str


def problem_out(problem: Any) -> ProblemOut:
    return ProblemOut(
        path=str(getattr(problem, "path", "") or ""),
        message=str(getattr(problem, "message", problem)),
        source=getattr(problem, "source", None),
        line=getattr(problem, "line", None),
    )


def parse_texts(
    texts: Iterable[tuple[str, str]],
) -> tuple[list[ParsedDocument], list[ProblemOut]]:
    """Parse ``(text, source)`` pairs; every problem of every document is returned."""
    documents: list[ParsedDocument] = []
    problems: list[ProblemOut] = []
    for text, source in texts:
        result = parse_text(text, source)
        problems.extend(problem_out(p) for p in result.problems)
        for doc in result.documents:
            documents.append(
                ParsedDocument(
                    kind=doc.kind,
                    name=doc.name,
                    document=msgspec.to_builtins(doc),
                    source=source,
                    source_text=text,
                )
            )
    return documents, problems


class ResourceSet(msgspec.Struct, kw_only=True):
    """Templates, triggers, channels and destinations a journey is checked against."""

    templates: dict[str, Template] = msgspec.field(default_factory=dict)
    triggers: dict[str, Trigger] = msgspec.field(default_factory=dict)
    channels: dict[str, Channel] = msgspec.field(default_factory=dict)
    destinations: dict[str, Destination] = msgspec.field(default_factory=dict)
    ready_templates: set[str] = msgspec.field(default_factory=set)

    @classmethod
    def of(cls, resources: Iterable[StoredResource]) -> ResourceSet:
        out = cls()
        for r in resources:
            out.add(r.kind, r.document, ready=r.status == "ready")
        return out

    def add(self, kind: str, document: Mapping[str, Any], *, ready: bool) -> None:
        name = str(document.get("name"))
        if kind == "Template":
            self.templates[name] = msgspec.convert(document, Template)
            if ready:
                self.ready_templates.add(name)
            else:
                self.ready_templates.discard(name)
        elif kind == "Trigger":
            # Trigger documents are keyed by the event they describe.
            trigger = msgspec.convert(document, Trigger)
            self.triggers[trigger.event] = trigger
        elif kind == "Channel":
            self.channels[name] = msgspec.convert(document, Channel)
        elif kind == "Destination":
            self.destinations[name] = msgspec.convert(document, Destination)


def _reparse(resource: StoredResource) -> tuple[Journey | None, list[ProblemOut]]:
    """The draft parsed again from the text it was applied from (for lines in problems)."""
    if resource.source_text is None:
        return msgspec.convert(resource.document, Journey), []
    result = parse_text(resource.source_text, resource.source or "<applied>")
    for doc in result.documents:
        if isinstance(doc, Journey) and doc.name == resource.name:
            return doc, []
    return None, [problem_out(p) for p in result.problems]


def check_journey(journey: Journey, resources: ResourceSet, limits: Limits | None = None) -> list[ProblemOut]:
    problems = check_publishable(
        journey,
        templates=resources.templates,
        triggers=resources.triggers,
        channels=resources.channels,
        destinations=resources.destinations,
        ready_templates=resources.ready_templates,
        limits=limits or Limits(),
    )
    return [problem_out(p) for p in problems]


def check_journey_draft(draft: StoredResource, resources: ResourceSet, limits: Limits | None = None) -> list[ProblemOut]:
    journey, problems = _reparse(draft)
    if journey is None:
        return problems or [ProblemOut(path="", message=f"journey {draft.name!r} no longer parses")]
    return check_journey(journey, resources, limits)


def check_documents(
    documents: Sequence[ParsedDocument], stored: Iterable[StoredResource]
) -> list[ProblemOut]:
    """Reference problems of the journeys among ``documents``, as if they had been applied on top
    of ``stored``. Template readiness is not checked: it is lifecycle state, checked at publish."""
    resources = ResourceSet.of(stored)
    for doc in documents:
        if doc.kind != "Journey":
            resources.add(doc.kind, doc.document, ready=True)
    resources.ready_templates = set(resources.templates)
    problems: list[ProblemOut] = []
    for doc in documents:
        if doc.kind == "Journey":
            journey, reparse_problems = _reparse(
                StoredResource(
                    kind=doc.kind,
                    name=doc.name,
                    document=doc.document,
                    source=doc.source,
                    source_text=doc.source_text,
                    status="draft",
                )
            )
            problems.extend(reparse_problems)
            if journey is not None:
                problems.extend(check_journey(journey, resources))
    return problems
