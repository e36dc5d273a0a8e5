"""Reading documents: YAML (multi-document) or JSON files and text, into model structs.

Every problem of every document is reported, each with its path (``steps[1].wait_for.within``)
and line, never a stack trace. A document with problems is left out of
:attr:`LoadResult.documents`; the others are kept.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from cairn_journey.journey_reader import JourneyReader
from cairn_journey.located import LocatedList, LocatedYAMLError, documents_in, json_documents
from cairn_journey.model import DOCUMENT_KINDS, Document
from cairn_journey.problems import Problem
from cairn_journey.reader import Reader, type_name
from cairn_journey.resource_reader import ResourceReader

__all__ = [
    "DocumentError",
    "LoadResult",
    "LoadedDocument",
    "Problem",
    "load_documents",
    "parse_document",
    "parse_text",
    "to_document",
]


class LoadedDocument(msgspec.Struct, frozen=True, kw_only=True):
    """A document that parsed cleanly, with the plain data it came from and where."""

    document: Document
    raw: dict[str, Any]
    source: str
    line: int | None = None


class LoadResult(msgspec.Struct, frozen=True, kw_only=True):
    documents: list[Document]
    problems: list[Problem]
    loaded: list[LoadedDocument] = msgspec.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class DocumentError(ValueError):
    """Raised by :func:`parse_document` when a document has problems; carries them all."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def load_documents(paths: Iterable[Path]) -> LoadResult:
    """Load files or directories (recursively: ``*.yaml``, ``*.yml``, ``*.json``, sorted)."""
    problems: list[Problem] = []
    loaded: list[LoadedDocument] = []
    for path in paths:
        for file in _files(path, problems):
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                problems.append(
                    Problem(path="", message=f"cannot read: {reason}", source=str(file))
                )
                continue
            _parse_into(text, str(file), file.suffix.lower() == ".json", loaded, problems)
    return _result(loaded, problems)


def parse_text(text: str, source: str) -> LoadResult:
    """Parse YAML or JSON text that may hold several documents (``---``)."""
    problems: list[Problem] = []
    loaded: list[LoadedDocument] = []
    _parse_into(text, source, source.lower().endswith(".json"), loaded, problems)
    return _result(loaded, problems)


def parse_document(data: Mapping[str, Any], source: str = "") -> Document:
    """Build one document from plain data (e.g. JSON stored by the control plane).

    Raises :class:`DocumentError` with every problem when it is not valid.
    """
    document, problems = _build(dict(data), source, None)
    if document is None:
        raise DocumentError(problems)
    return document


def to_document(document: Document) -> dict[str, Any]:
    """Plain data for a document (with its ``kind``), which :func:`parse_document` reads back
    to an equal struct. Durations come out as ISO 8601 (``P1D``)."""
    data: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(document))
    return {"kind": document.kind, **data}


# --------------------------------------------------------------------------- internals


def _files(path: Path, problems: list[Problem]) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _SUFFIXES)
        if not found:
            problems.append(
                Problem(path="", message="no .yaml, .yml or .json files here", source=str(path))
            )
        return found
    if not path.exists():
        problems.append(Problem(path="", message="no such file or directory", source=str(path)))
        return []
    return [path]


_SUFFIXES = (".yaml", ".yml", ".json")


def _parse_into(
    text: str, source: str, is_json: bool, loaded: list[LoadedDocument], problems: list[Problem]
) -> None:
    try:
        if is_json and text.lstrip()[:1] in ("{", "["):
            for data, line in _json_with_lines(text):
                _add(data, source, line, loaded, problems)
            return
        for data, line in documents_in(text):
            _add(data, source, line, loaded, problems)
    except LocatedYAMLError as exc:
        problems.append(
            Problem(path="", message=f"not valid YAML/JSON: {exc}", source=source, line=exc.line)
        )


def _json_with_lines(text: str) -> list[tuple[Any, int | None]]:
    """A JSON document, or a list of them. Read with the YAML reader first (JSON is YAML) so
    problems get lines; what it cannot read goes to the JSON parser for a JSON error."""
    try:
        found = list(documents_in(text))
    except LocatedYAMLError:
        return [(data, None) for data in json_documents(text)]
    out: list[tuple[Any, int | None]] = []
    for data, line in found:
        if isinstance(data, LocatedList):
            out.extend((item, data.line_of(i)) for i, item in enumerate(data))
        else:
            out.append((data, line))
    return out


def _add(
    data: Any,
    source: str,
    line: int | None,
    loaded: list[LoadedDocument],
    problems: list[Problem],
) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        problems.append(
            Problem(
                path="",
                message=f"a document must be a mapping with a kind, got {type_name(data)}",
                source=source,
                line=line,
            )
        )
        return
    document, found = _build(data, source, line)
    problems.extend(found)
    if document is not None:
        loaded.append(LoadedDocument(document=document, raw=_plain(data), source=source, line=line))


def _build(
    data: dict[str, Any], source: str, line: int | None
) -> tuple[Document | None, list[Problem]]:
    try:
        return _build_document(data, source, line)
    except RecursionError:
        return None, [Problem(path="", message="nested too deeply", source=source, line=line)]


def _build_document(
    data: dict[str, Any], source: str, line: int | None
) -> tuple[Document | None, list[Problem]]:
    kind = data.get("kind")
    reader: Reader
    document: Document | None
    duplicates = [
        Problem(path=key, message="duplicate key", source=source, line=dup_line)
        for key, dup_line in getattr(data, "duplicates", ())
    ]
    if kind == "Journey":
        reader = JourneyReader(source, line)
        document = reader.journey(data)
    elif kind in ("Template", "Trigger", "Channel", "Destination"):
        reader = ResourceReader(source, line)
        if kind == "Template":
            document = reader.template(data)
        elif kind == "Trigger":
            document = reader.trigger(data)
        else:
            document = reader.connection(data, kind)
    else:
        reader = Reader(source, line)
        kinds = ", ".join(DOCUMENT_KINDS)
        if kind is None:
            reader.problem("kind", f"required but missing (one of {kinds})", line)
        else:
            hint = difflib.get_close_matches(str(kind), DOCUMENT_KINDS, n=1)
            extra = f'; did you mean "{hint[0]}"?' if hint else f" (one of {kinds})"
            reader.problem("kind", f"unknown kind {kind!r}{extra}", reader.line_in(data, "kind"))
        return None, duplicates + reader.problems
    if reader.problems or duplicates or document is None:
        found = duplicates + reader.problems
        if not found:  # a safety net: a refused document always says why
            found = [Problem(path="", message=f"not a valid {kind}", source=source, line=line)]
        return None, found
    return document, []


def _result(loaded: list[LoadedDocument], problems: list[Problem]) -> LoadResult:
    seen: dict[tuple[str, str], LoadedDocument] = {}
    kept: list[LoadedDocument] = []
    for item in loaded:
        key = (item.document.kind, item.document.name)
        first = seen.get(key)
        if first is not None:
            where = f"{first.source}:{first.line}" if first.line else first.source
            problems.append(
                Problem(
                    path="name",
                    message=f"{key[0]} {key[1]!r} is defined twice (first at {where})",
                    source=item.source,
                    line=item.line,
                )
            )
            continue
        seen[key] = item
        kept.append(item)
    return LoadResult(documents=[d.document for d in kept], problems=problems, loaded=kept)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
