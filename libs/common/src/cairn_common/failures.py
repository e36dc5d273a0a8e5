"""Cairn's one failure policy: every error is transient, permanent for one input, or a bug.

- ``TRANSIENT``: the world is briefly unavailable (a connection lost, NATS or PostgreSQL
  restarting, a timeout, a serialization failure or deadlock). Retry the same work later, with
  backoff; nothing is wrong with the input.
- ``PERMANENT``: this input can never succeed (a value PostgreSQL cannot store, a constraint it
  violates, a payload larger than the transport allows, bytes that do not decode). Retrying it is
  useless and blocks whatever waits behind it: dead-letter that one input with the reason and go
  on with its neighbours.
- ``BUG``: anything else. Crash (Kubernetes restarts the process); a loop must not hide it.

Every consume loop, the matcher's group commit, the outbox relay and the dispatcher decide with
``classify``; nothing else in the code base keeps its own list of "transient" exceptions.
"""

from __future__ import annotations

import asyncio
import enum

import asyncpg
import msgspec
from nats import errors as nats_errors
from nats.js import errors as js_errors


class Failure(enum.Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    BUG = "bug"


class PermanentInputError(Exception):
    """Raised by our own code for an input that can never succeed (e.g. over a size budget)."""


class TransientError(Exception):
    """Raised by our own code for a condition that will pass (e.g. a batch not acknowledged)."""


class PublishFailed(Exception):
    """At least one message of a batch was not acknowledged; the batch may be retried whole.
    Classified by its ``__cause__`` (the refusal); without one it is a missing acknowledgement
    (a timeout), so transient."""


# SQLSTATE classes (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_PG_TRANSIENT_CLASSES = ("08", "53", "57", "58", "XX")
"""Connection exception, insufficient resources, operator intervention (shutdown, statement
timeout, cannot connect now), system error, internal error."""
_PG_TRANSIENT_STATES = ("40001", "40P01", "55P03", "55006")
"""Serialization failure, deadlock detected, lock not available, object in use."""
_PG_PERMANENT_CLASSES = ("22", "23", "54")
"""Data exception (NUL in text, bad encoding, value out of range), integrity constraint
violation, program limit exceeded (a value or row too large to store or index)."""

_NATS_TRANSIENT: tuple[type[BaseException], ...] = (
    nats_errors.ConnectionClosedError,
    nats_errors.ConnectionDrainingError,
    nats_errors.ConnectionReconnectingError,
    nats_errors.DrainTimeoutError,
    nats_errors.FlushTimeoutError,
    nats_errors.NoRespondersError,
    nats_errors.NoServersError,
    nats_errors.OutboundBufferLimitError,
    nats_errors.SlowConsumerError,
    nats_errors.StaleConnectionError,
    nats_errors.TimeoutError,
    nats_errors.UnexpectedEOF,
    js_errors.ServiceUnavailableError,
    js_errors.ServerError,
    js_errors.NoStreamResponseError,
    js_errors.FetchTimeoutError,
)
_PERMANENT: tuple[type[BaseException], ...] = (
    PermanentInputError,
    nats_errors.MaxPayloadError,
    msgspec.DecodeError,
    msgspec.EncodeError,
    msgspec.ValidationError,
    UnicodeError,
    RecursionError,
)

# JetStream API error codes that mean "not now" (storage full, stream or leader unavailable).
_JS_TRANSIENT_CODES = frozenset({10008, 10023, 10047, 10077, 10118})
_JS_TRANSIENT_STATUS = frozenset({408, 500, 503})


def classify(exc: BaseException) -> Failure:
    """Which of the three kinds ``exc`` is. ``CancelledError`` is never classified: re-raise it."""
    if isinstance(exc, asyncio.CancelledError):
        raise exc
    if isinstance(exc, TransientError):
        return Failure.TRANSIENT
    if isinstance(exc, PublishFailed):
        return classify(exc.__cause__) if exc.__cause__ is not None else Failure.TRANSIENT
    if isinstance(exc, _PERMANENT):
        return Failure.PERMANENT
    if isinstance(exc, asyncpg.PostgresError):
        return _classify_postgres(exc)
    if isinstance(exc, asyncpg.exceptions._base.DataError):
        # asyncpg refused an argument before sending it (an int out of int4 range, a str for an
        # int): the input's fault, however it is otherwise an InterfaceError.
        return Failure.PERMANENT
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.exceptions.InternalClientError):
        # The client's view of a broken connection (closed, in a failed transaction after a
        # disconnect) passes with a new connection.
        return Failure.TRANSIENT
    if isinstance(exc, _NATS_TRANSIENT):
        return Failure.TRANSIENT
    if isinstance(exc, js_errors.APIError):
        if exc.err_code in _JS_TRANSIENT_CODES or exc.code in _JS_TRANSIENT_STATUS:
            return Failure.TRANSIENT
        return Failure.PERMANENT
    if isinstance(exc, OSError | TimeoutError | ConnectionError):
        return Failure.TRANSIENT
    return Failure.BUG


def _classify_postgres(exc: asyncpg.PostgresError) -> Failure:
    state = getattr(exc, "sqlstate", None) or ""
    if state in _PG_TRANSIENT_STATES or state[:2] in _PG_TRANSIENT_CLASSES:
        return Failure.TRANSIENT
    if state[:2] in _PG_PERMANENT_CLASSES:
        return Failure.PERMANENT
    return Failure.BUG


def is_transient(exc: BaseException) -> bool:
    return classify(exc) is Failure.TRANSIENT


def is_permanent(exc: BaseException) -> bool:
    return classify(exc) is Failure.PERMANENT


def describe(exc: BaseException) -> str:
    """A reason for a dead letter or a log line: the type and message, SQLSTATE when there is one,
    bounded so a huge value in an error message cannot make the dead letter itself too large."""
    state = getattr(exc, "sqlstate", None)
    text = f"{type(exc).__name__}{f' [{state}]' if state else ''}: {exc}"
    return text if len(text) <= 1000 else text[:997] + "..."


class Backoff:
    """A doubling delay between ``first`` and ``cap`` seconds; ``reset`` after a success."""

    def __init__(self, first: float = 0.2, cap: float = 5.0) -> None:
        self._first = first
        self._cap = cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self._cap)
        return delay

    def reset(self) -> None:
        self._next = self._first
