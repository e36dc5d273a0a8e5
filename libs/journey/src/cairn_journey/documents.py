"""Reading documents: YAML (multi-document) or JSON files and text, into model structs.

Every problem of every document is reported, each with its path (``steps[1].wait_for.within``)
and line, never a stack trace. A document with problems is left out of
:attr:`LoadResult.documents`; the others are kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from cairn_journey.model import Document
from cairn_journey.problems import Problem

__all__ = [
    "DocumentError",
    "LoadResult",
    "LoadedDocument",
    "Problem",
    "load_documents",
    "parse_document",
    "parse_text",
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
    """Load files or directories (recursively: ``*.yaml``, ``*.yml``, ``*.json``)."""
    raise NotImplementedError


def parse_text(text: str, source: str) -> LoadResult:
    """Parse YAML or JSON text that may hold several documents (``---``)."""
    raise NotImplementedError


def parse_document(data: Mapping[str, Any], source: str = "") -> Document:
    """Build one document from plain data (e.g. JSON stored by the control plane).

    Raises :class:`DocumentError` with every problem when it is not valid.
    """
    raise NotImplementedError
