"""What PostgreSQL can store, checked before it is asked to: its ``text`` and ``jsonb`` refuse NUL
characters, UTF-8 refuses unpaired surrogates (JSON's ``\\ud800``), and a structure nested
thousands of levels deep overflows every recursive encoder and decoder on the way.

Ingest refuses such an event at the edge (``check_storable``); a service that receives one anyway
(from a client of its own subjects) names the bad value with the same words (``string_problem``)
or stores a readable stand-in where it must record something (``storable_text``).

The walk is iterative, so it cannot itself overflow the stack however deep the input.
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 64
"""Objects and arrays may nest this deep inside an event's ``properties``, ``traits``,
``context`` or ``integrations`` (Segment documents no limit; 64 is far beyond any real event)."""


class Unstorable(ValueError):
    """``path`` names the offending value (``properties.items[2].name``)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path} {problem}")
        self.path = path


def string_problem(text: str) -> str | None:
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
            problem = string_problem(item)
            if problem:
                raise Unstorable(path, problem)
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                raise Unstorable(path, f"nests deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    key_text = str(key)
                    problem = string_problem(key_text)
                    if problem:
                        raise Unstorable(f"key {key_text!r} of {path}", problem)
                    stack.append((f"{path}.{key_text}", child, depth + 1))
            else:
                stack.extend((f"{path}[{i}]", child, depth + 1) for i, child in enumerate(item))


def storable_text(text: str) -> str:
    """``text`` with each NUL and unpaired surrogate replaced by U+FFFD: for values that must be
    recorded whatever they hold (an address in the ledger, a reason quoting a bad value)."""
    if string_problem(text) is None:
        return text
    return "".join("\ufffd" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in text)
