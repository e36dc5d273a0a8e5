"""Ingest's half of "every accepted event must be storable everywhere it goes": the checks
themselves live in ``cairn_common.storable``; here are the byte-level helpers that let a batch
refuse its one bad item and keep the rest (``lone_surrogate``, ``split_array``).
"""

from __future__ import annotations

import re

from cairn_common.storable import MAX_DEPTH, Unstorable, check_storable

__all__ = ["MAX_DEPTH", "Unstorable", "check_storable", "lone_surrogate", "split_array"]

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
