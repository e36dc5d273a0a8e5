"""Every accepted event must be storable everywhere it goes: PostgreSQL's ``text`` and ``jsonb``
refuse NUL characters, UTF-8 refuses unpaired surrogates (JSON's ``\\ud800``), and a structure
nested thousands of levels deep overflows every recursive encoder and decoder on the way. An
event that holds one of these is refused here, at the edge, with the JSON path of the first bad
value, instead of being accepted and then failing in the matcher or the dispatcher.

The walk is iterative, so it cannot itself overflow the stack however deep the input.
"""

from __future__ import annotations

import re
from typing import Any

MAX_DEPTH = 64
"""Objects and arrays may nest this deep inside an event's ``properties``, ``traits``,
``context`` or ``integrations`` (Segment documents no limit; 64 is far beyond any real event)."""


class Unstorable(ValueError):
    """``path`` names the offending value (``properties.items[2].name``)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path} {problem}")
        self.path = path


def _string_problem(text: str) -> str | None:
    if "\x00" in text:
        return "holds a NUL character (\\u0000), which cannot be stored"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "holds an unpaired UTF-16 surrogate, which is not valid Unicode"
    return None


def check_storable(root: str, value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """Raise ``Unstorable`` for the first NUL, unpaired surrogate (in a key or a value) or
    nesting deeper than ``max_depth`` under ``root``."""
    stack: list[tuple[str, Any, int]] = [(root, value, 0)]
    while stack:
        path, item, depth = stack.pop()
        if isinstance(item, str):
            problem = _string_problem(item)
            if problem:
                raise Unstorable(path, problem)
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                raise Unstorable(path, f"nests deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    key_text = str(key)
                    problem = _string_problem(key_text)
                    if problem:
                        raise Unstorable(f"key {key_text!r} of {path}", problem)
                    stack.append((f"{path}.{key_text}", child, depth + 1))
            else:
                stack.extend((f"{path}[{i}]", child, depth + 1) for i, child in enumerate(item))


_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?:\\u[dD][c-fC-F][0-9a-fA-F]{2})?|\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def lone_surrogate(raw: bytes) -> str | None:
    """The first ``\\uD800``-style escape in ``raw`` that is not half of a surrogate pair, if any
    (the JSON decoder refuses these with an unhelpful message; this names the culprit)."""
    for found in _SURROGATE.finditer(raw):
        if len(found.group()) == 6:
            return found.group().decode("ascii")
    return None


_OPEN, _CLOSE, _QUOTE, _BACKSLASH, _COMMA, _COLON = b"{[", b"}]", 34, 92, 44, 58


def split_array(body: bytes, key: bytes | None) -> tuple[list[bytes], bytes]:
    """The items of the top-level array (``key`` None) or of the array under the top-level
    ``key``, and the body with that array emptied, found by an iterative scan: used when an item
    nests too deep for the recursive decoder, so each item can be refused on its own. Raises
    ``ValueError`` when the body is not balanced JSON or has no such array."""
    depth, in_string, escaped = 0, False, False
    string_start, last_string, current_key = 0, b"", b""
    array_depth = 1 if key is None else 2
    start = end = -1
    items: list[bytes] = []
    item_start = 0
    for i, byte in enumerate(body):
        if in_string:
            if escaped:
                escaped = False
            elif byte == _BACKSLASH:
                escaped = True
            elif byte == _QUOTE:
                in_string = False
                last_string = body[string_start + 1 : i]
            continue
        if byte == _QUOTE:
            in_string, string_start = True, i
        elif byte in _OPEN:
            depth += 1
            if (
                depth == array_depth
                and start < 0
                and byte == 91
                and (key is None or current_key == key)
            ):
                start, item_start = i, i + 1
        elif byte in _CLOSE:
            if depth == array_depth and start >= 0 and end < 0:
                items.append(body[item_start:i])
                end = i
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced brackets")
        elif byte == _COMMA and depth == array_depth and start >= 0 and end < 0:
            items.append(body[item_start:i])
            item_start = i + 1
        elif byte == _COLON and depth == 1:
            current_key = last_string
    if depth != 0 or in_string or start < 0 or end < 0:
        raise ValueError("not a balanced JSON document with that array")
    items = [item.strip() for item in items]
    if items == [b""]:
        items = []
    return items, body[:start] + b"[]" + body[end + 1 :]
