"""YAML (and JSON) text to plain data that remembers the line of every key and list item.

PyYAML composes a node tree with marks; we construct it ourselves so that

- every mapping/list knows its own line and the line of each key/item (for problems);
- plain scalars resolve like YAML 1.2 (JSON) rather than 1.1: ``09:00`` stays a string
  instead of becoming the sexagesimal integer 540, ``yes``/``on`` stay strings, dates stay
  strings (the model parses them where they are expected);
- duplicate keys are reported instead of silently keeping the last one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import yaml


class LocatedMap(dict[str, Any]):
    """A mapping from text: ``line`` is where it starts, ``key_lines`` where each key is."""

    line: int | None = None
    key_lines: dict[str, int]
    duplicates: list[tuple[str, int]]

    def line_of(self, key: str) -> int | None:
        lines = getattr(self, "key_lines", None)
        return lines.get(key, self.line) if lines else self.line


class LocatedList(list[Any]):
    line: int | None = None
    item_lines: list[int]

    def line_of(self, index: int) -> int | None:
        lines: list[int] | None = getattr(self, "item_lines", None)
        if lines and index < len(lines):
            return lines[index]
        return self.line


_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


class LocatedYAMLError(ValueError):
    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line


def _scalar(node: yaml.ScalarNode) -> Any:
    text: str = node.value
    if node.style is not None:  # quoted, literal or folded: always a string
        return text
    lowered = text.lower()
    if lowered in ("", "~", "null"):
        return None
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text) and any(c.isdigit() for c in text):
        return float(text)
    if lowered in (".inf", "+.inf"):
        return float("inf")
    if lowered == "-.inf":
        return float("-inf")
    return text


MAX_NODES = 200_000
"""More nodes than this in one document (e.g. an alias bomb) is refused, not expanded."""


class _Budget:
    def __init__(self) -> None:
        self.left = MAX_NODES
        self.open: set[int] = set()


def _construct(node: yaml.Node, budget: _Budget) -> Any:
    budget.left -= 1
    if budget.left < 0:
        raise LocatedYAMLError(
            f"document too large (more than {MAX_NODES:,} values)", node.start_mark.line + 1
        )
    if id(node) in budget.open:
        raise LocatedYAMLError("an alias refers to itself", node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
        budget.open.add(id(node))
        try:
            return _collection(node, budget)
        finally:
            budget.open.discard(id(node))
    assert isinstance(node, yaml.ScalarNode)
    return _scalar(node)


def _collection(node: yaml.Node, budget: _Budget) -> Any:
    if isinstance(node, yaml.MappingNode):
        out = LocatedMap()
        out.line = node.start_mark.line + 1
        out.key_lines = {}
        out.duplicates = []
        for key_node, value_node in node.value:
            key = _construct(key_node, budget)
            if not isinstance(key, str):
                key = json.dumps(key) if not isinstance(key, LocatedMap | LocatedList) else "?"
            line = key_node.start_mark.line + 1
            if key in out:
                out.duplicates.append((key, line))
            out[key] = _construct(value_node, budget)
            out.key_lines[key] = line
        return out
    if isinstance(node, yaml.SequenceNode):
        items = LocatedList()
        items.line = node.start_mark.line + 1
        items.item_lines = []
        for child in node.value:
            items.append(_construct(child, budget))
            items.item_lines.append(child.start_mark.line + 1)
    return items


def documents_in(text: str) -> Iterator[tuple[Any, int]]:
    """Each document of the text with its first line. Raises :class:`LocatedYAMLError` at the
    first syntax error (documents before it have been yielded)."""
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # checks the characters at once
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            yield _construct(node, _Budget()), node.start_mark.line + 1
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or str(exc)
        if exc.context:
            message = f"{message} ({exc.context})"
        raise LocatedYAMLError(message, mark.line + 1 if mark else None) from None
    except yaml.reader.ReaderError as exc:
        raise LocatedYAMLError(
            f"character #x{exc.character:04x} is not allowed in YAML", None
        ) from None
    except yaml.YAMLError as exc:
        raise LocatedYAMLError(str(exc), None) from None
    except RecursionError:
        raise LocatedYAMLError("nested too deeply", None) from None
    finally:
        if loader is not None:
            loader.dispose()


def json_documents(text: str) -> list[Any]:
    """JSON text: one document, or a list of documents. Raises :class:`LocatedYAMLError`."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LocatedYAMLError(f"not valid JSON: {exc.msg}", exc.lineno) from None
    return data if isinstance(data, list) else [data]
