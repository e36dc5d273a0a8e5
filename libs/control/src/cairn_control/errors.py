"""What the control plane refuses, and why, in words an operator can act on.

Every refusal is a ``ControlError`` with a stable ``code``, a sentence, and (for documents) the
list of problems, each with its path, file and line. The admin API turns it into
``{"code", "message", "problems": [...]}`` with the matching HTTP status; the CLI prints it.
"""

from __future__ import annotations

import msgspec


class ProblemOut(msgspec.Struct, frozen=True, kw_only=True):
    """One problem in a document, as the API and CLI show it."""

    path: str
    message: str
    source: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = ""
        if self.source is not None:
            where = (
                f" ({self.source}:{self.line})" if self.line is not None else f" ({self.source})"
            )
        prefix = f"{self.path}: " if self.path else ""
        return f"{prefix}{self.message}{where}"


class ControlError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, problems: list[ProblemOut] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems or []


class Invalid(ControlError):
    """The documents (or the request) have problems; nothing was changed."""

    status = 422
    code = "invalid"


class NotFound(ControlError):
    status = 404
    code = "not_found"


class Conflict(ControlError):
    """The request is valid but the current state forbids it (e.g. template in use)."""

    status = 409
    code = "conflict"


class Unavailable(ControlError):
    """A dependency (NATS, PostgreSQL) did not answer; retrying the same request is safe."""

    status = 503
    code = "unavailable"
