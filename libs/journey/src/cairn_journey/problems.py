"""A problem found in a document: where (path and line) and what."""

from __future__ import annotations

import msgspec


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """One problem of one document.

    ``str(problem)`` reads ``steps[1].wait_for.within: "1x" is not a duration (cart.yaml:14)``.
    ``line`` is 1-based; ``None`` when the document did not come from text with lines.
    """

    path: str
    message: str
    source: str = ""
    line: int | None = None

    def __str__(self) -> str:
        where = ""
        if self.source and self.line is not None:
            where = f" ({self.source}:{self.line})"
        elif self.source:
            where = f" ({self.source})"
        elif self.line is not None:
            where = f" (line {self.line})"
        head = f"{self.path}: " if self.path else ""
        return f"{head}{self.message}{where}"
