"""The bridge to the journey language (``cairn_journey``): parse documents, check a draft.

Documents arrive as text (a file's content and its name) so every problem can name the file and
line. What is stored is the parsed document in its canonical form (``msgspec.to_builtins`` of the
model struct, which parses back to the same struct), plus the text it came from, so publishing a
draft later still reports problems with the line the operator wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import msgspec
import yaml

from cairn_control.errors import ProblemOut
from cairn_journey.documents import DocumentError, parse_document, parse_text
from cairn_journey.model import Channel, Destination, Document, Journey, Template, Trigger
from cairn_journey.problems import Problem
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


def problem_out(problem: Problem, lines: Mapping[str, int] | None = None) -> ProblemOut:
    """The API's form of a problem; a problem without a line gets the line of its path (or of
    the nearest enclosing path) in the document's text, when there is one."""
    line = problem.line
    if line is None and lines:
        line = line_of(problem.path, lines)
    return ProblemOut(
        path=problem.path, message=problem.message, source=problem.source or None, line=line
    )


def canonical(doc: Document) -> dict[str, Any]:
    """The document as stored: ``to_builtins`` of its struct (defaults left out, durations as
    ISO-8601) with ``kind`` kept, so it parses back to the same struct anywhere."""
    data: dict[str, Any] = msgspec.to_builtins(doc)
    return {"kind": doc.kind, **data}


def parse_texts(
    texts: Iterable[tuple[str, str]],
) -> tuple[list[ParsedDocument], list[ProblemOut]]:
    """Parse ``(text, source)`` pairs; every problem of every document is returned."""
    documents: list[ParsedDocument] = []
    problems: list[ProblemOut] = []
    for text, source in texts:
        result = parse_text(text, source)
        problems.extend(problem_out(p) for p in result.problems)
        for loaded in result.loaded:
            doc = loaded.document
            documents.append(
                ParsedDocument(
                    kind=doc.kind,
                    name=doc.name,
                    document=canonical(doc),
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
        try:
            doc = parse_document({"kind": kind, **document})
        except DocumentError:
            return  # stored before a language change made it invalid: as if it were absent
        match doc:
            case Template():
                self.templates[doc.name] = doc
                if ready:
                    self.ready_templates.add(doc.name)
                else:
                    self.ready_templates.discard(doc.name)
            case Trigger():
                self.triggers[doc.event] = doc  # keyed by the event it describes
            case Channel():
                self.channels[doc.name] = doc
            case Destination():
                self.destinations[doc.name] = doc
            case _:
                pass


class Draft(msgspec.Struct, frozen=True, kw_only=True):
    journey: Journey
    source: str | None
    lines: dict[str, int]
    """Line of each path of the document in its source text (empty without text)."""


def _reparse(resource: StoredResource) -> tuple[Draft | None, list[ProblemOut]]:
    """The draft parsed again from the text it was applied from (for lines in problems)."""
    if resource.source_text is None:
        try:
            journey = parse_document({"kind": "Journey", **resource.document})
        except DocumentError as exc:
            return None, [problem_out(p) for p in exc.problems]
        assert isinstance(journey, Journey)
        return Draft(journey=journey, source=resource.source, lines={}), []
    source = resource.source or "<applied>"
    result = parse_text(resource.source_text, source)
    for loaded in result.loaded:
        doc = loaded.document
        if isinstance(doc, Journey) and doc.name == resource.name:
            lines = path_lines(resource.source_text, "Journey", resource.name)
            return Draft(journey=doc, source=source, lines=lines), []
    return None, [problem_out(p) for p in result.problems]


def check_journey(
    draft: Draft, resources: ResourceSet, limits: Limits | None = None
) -> list[ProblemOut]:
    journey = draft.journey
    problems = check_publishable(
        journey,
        templates=resources.templates,
        triggers=resources.triggers,
        channels=resources.channels,
        destinations=resources.destinations,
        ready_templates=resources.ready_templates,
        limits=limits or Limits(),
    )
    return [
        problem_out(msgspec.structs.replace(p, source=p.source or draft.source or ""), draft.lines)
        for p in problems
    ]


def check_journey_draft(
    resource: StoredResource, resources: ResourceSet, limits: Limits | None = None
) -> list[ProblemOut]:
    draft, problems = _reparse(resource)
    if draft is None:
        return problems or [
            ProblemOut(path="", message=f"journey {resource.name!r} does not parse")
        ]
    return check_journey(draft, resources, limits)


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
            draft, reparse_problems = _reparse(
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
            if draft is not None:
                problems.extend(check_journey(draft, resources))
    return problems


REFERENCE_PATHS = {"Template": ".send.template", "Channel": ".send.channel",
                   "Destination": ".send.destination"}  # fmt: skip


def check_offline(documents: Sequence[ParsedDocument]) -> tuple[list[ProblemOut], list[str]]:
    """``cairn validate``: the journeys' references checked against the documents given. A kind
    of which no document is given at all (e.g. templates kept elsewhere) is not checked; its name
    is returned so the caller can say so."""
    given = {d.kind for d in documents}
    unchecked = [kind for kind in REFERENCE_PATHS if kind not in given]
    skip = tuple(REFERENCE_PATHS[kind] for kind in unchecked)
    problems = [p for p in check_documents(documents, []) if not (skip and p.path.endswith(skip))]
    journeys = any(d.kind == "Journey" for d in documents)
    return problems, unchecked if journeys else []


# ---- lines of paths ------------------------------------------------------------------------------


def path_lines(text: str, kind: str, name: str) -> dict[str, int]:
    """``{"steps[1].wait_for.within": 14, ...}`` for the document of that kind and name in
    ``text`` (YAML or JSON), so a problem found on the parsed struct can still name its line."""
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError:
        return {}
    for node in nodes:
        if (
            isinstance(node, yaml.MappingNode)
            and _scalar(node, "kind") == kind
            and (_scalar(node, "name") == name)
        ):
            lines: dict[str, int] = {"": node.start_mark.line + 1}
            _walk(node, "", lines)
            return lines
    return {}


def _scalar(node: yaml.MappingNode, key: str) -> str | None:
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key and isinstance(v, yaml.ScalarNode):
            return str(v.value)
    return None


def _walk(node: yaml.Node, prefix: str, lines: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = f"{prefix}.{key.value}" if prefix else str(key.value)
            lines[path] = key.start_mark.line + 1
            _walk(value, path, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = f"{prefix}[{i}]"
            lines[path] = item.start_mark.line + 1
            _walk(item, path, lines)


def line_of(path: str, lines: Mapping[str, int]) -> int | None:
    """The line of ``path``, else of the nearest enclosing path that has one."""
    while True:
        if path in lines:
            return lines[path]
        if not path:
            return None
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""


def templates_used(definition: Any) -> Iterator[str]:
    """Every template a journey document sends, at any depth of branches."""
    if isinstance(definition, dict):
        send = definition.get("send")
        if isinstance(send, dict) and isinstance(send.get("template"), str):
            yield send["template"]
        for value in definition.values():
            yield from templates_used(value)
    elif isinstance(definition, list):
        for item in definition:
            yield from templates_used(item)
