"""The one failure policy: which errors are retried, which dead-letter one input, which crash."""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec
import pytest
from nats import errors as nats_errors
from nats.js import errors as js_errors

from cairn_common.failures import Backoff, Failure, PermanentInputError, classify, describe


def _pg(sqlstate: str) -> asyncpg.PostgresError:
    cls = asyncpg.PostgresError.get_message_class_for_sqlstate(sqlstate)  # type: ignore[attr-defined]
    return cls("boom")  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (_pg("22P05"), Failure.PERMANENT),  # untranslatable character (a NUL in jsonb)
        (_pg("22021"), Failure.PERMANENT),  # a NUL in text
        (_pg("23505"), Failure.PERMANENT),  # unique violation
        (_pg("54000"), Failure.PERMANENT),  # program limit exceeded (row too big)
        (_pg("40P01"), Failure.TRANSIENT),  # deadlock
        (_pg("40001"), Failure.TRANSIENT),  # serialization failure
        (_pg("57P01"), Failure.TRANSIENT),  # admin shutdown
        (_pg("08006"), Failure.TRANSIENT),  # connection failure
        (_pg("42P01"), Failure.BUG),  # undefined table: our SQL is wrong
        (asyncpg.InterfaceError("connection is closed"), Failure.TRANSIENT),
        # asyncpg refusing an argument client-side (an int past int4) is the input's fault
        (
            asyncpg.exceptions._base.DataError("invalid input for query argument $4"),
            Failure.PERMANENT,
        ),
        (ConnectionResetError(), Failure.TRANSIENT),
        (TimeoutError(), Failure.TRANSIENT),
        (nats_errors.NoServersError(), Failure.TRANSIENT),
        (nats_errors.TimeoutError(), Failure.TRANSIENT),
        (js_errors.ServiceUnavailableError(code=503), Failure.TRANSIENT),
        (js_errors.APIError(code=503, err_code=10077), Failure.TRANSIENT),  # stream full
        (js_errors.BadRequestError(code=400, err_code=10052), Failure.PERMANENT),
        (nats_errors.MaxPayloadError(), Failure.PERMANENT),
        (msgspec.DecodeError("bad"), Failure.PERMANENT),
        (RecursionError(), Failure.PERMANENT),
        (PermanentInputError("too big"), Failure.PERMANENT),
        (KeyError("x"), Failure.BUG),
        (AttributeError("x"), Failure.BUG),
    ],
)
def test_each_error_has_one_kind(exc: BaseException, kind: Failure) -> None:
    assert classify(exc) is kind


def test_cancellation_is_never_classified() -> None:
    with pytest.raises(asyncio.CancelledError):
        classify(asyncio.CancelledError())


def test_reason_names_type_and_sqlstate_and_is_bounded() -> None:
    reason = describe(_pg("22P05"))
    assert reason.startswith("UntranslatableCharacterError [22P05]")
    assert len(describe(ValueError("x" * 10_000))) == 1000


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    b = Backoff(0.5, 3.0)
    assert [b.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    b.reset()
    assert b.next() == 0.5
