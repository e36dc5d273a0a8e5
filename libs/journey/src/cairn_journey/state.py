"""A profile's journey state: its traits, its running instances and its entry history.

The matcher keeps one :class:`ProfileState` per profile (its actor), stores it with
:func:`encode_state` (compact MessagePack) and hands it to the interpreter with each input. The
structs are frozen; the interpreter returns a new state and never changes the one it was given.
New fields always get defaults, so a state written by an older release still decodes.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Literal

import msgspec

PendingKind = Literal["wait", "wait_for", "send"]


class Pending(msgspec.Struct, frozen=True, array_like=True):
    """What an instance is waiting for at its current step: a timer, and for ``wait_for`` also an
    event; for ``send`` the delivery's outcome (the timer is the bound after which it moves on
    as ``unknown``)."""

    step_id: str
    timer_id: str
    kind: PendingKind
    due_at: datetime
    graced: bool = False
    """A ``wait_for`` whose timer came through an outage was given ``LATE_GRACE`` more before
    timing out (decision 0065); its window still ends at ``due_at``."""


class SendOutcome(msgspec.Struct, frozen=True, array_like=True):
    """What became of a send step's message: ``sent`` (``at`` is when the provider took it),
    ``skipped``, ``suppressed``, ``failed``, ``bounced``, ``dropped``, ``dead_lettered``, or
    ``unknown`` (no result within the step's bound; ``at`` is when the bound ended), or
    ``withheld`` (the instance is in the journey's holdout)."""

    outcome: str
    at: datetime
    reason: str | None = None

    @property
    def sent(self) -> bool:
        return self.outcome == "sent"

    @property
    def not_sent(self) -> bool:
        """Known not to have reached the recipient. A message ``withheld`` from a holdout
        instance counts as sent for what follows it: the holdout waits as long as a customer
        who ignored it would."""
        return self.outcome not in ("sent", "unknown", "withheld")


class Heard(msgspec.Struct, frozen=True, array_like=True):
    """An event a later ``wait_for`` may need that arrived before the instance got there (while
    it waited on a send's outcome, or one naming a send of this instance): ``record`` as in
    ``Instance.matched``, ``at`` when it was applied."""

    record: dict[str, Any]
    at: datetime


class TriggerEvent(msgspec.Struct, frozen=True, array_like=True):
    """The event that started an instance; ``event.*`` paths in its steps read it."""

    name: str
    message_id: str
    properties: dict[str, Any]
    context: dict[str, Any]
    timestamp: datetime | None = None


class Instance(msgspec.Struct, frozen=True, array_like=True):
    """One running journey instance.

    ``position`` is the id of the step it is at (step ids are unique across a journey, so the id
    names the path to the step). ``sends`` maps a send step's id to the delivery id it requested
    (what ``wait_for: {of: step}`` correlates with); ``matched`` maps a ``wait_for`` step's id to
    the event that satisfied it; ``splits`` the path index a ``split`` chose; ``visits`` how many
    times each step was reached (part of timer and delivery ids); ``outcomes`` what became of
    each send step's message; ``heard`` events a later ``wait_for`` may need (newest last);
    ``holdout`` whether it is in the journey's control group (it sends nothing).
    """

    id: str
    journey: str
    version: int
    unique_value: str | None
    started_at: datetime
    trigger: TriggerEvent
    position: str = ""
    pending: Pending | None = None
    converted: bool = False
    sends: dict[str, str] = msgspec.field(default_factory=dict)
    matched: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    splits: dict[str, int] = msgspec.field(default_factory=dict)
    visits: dict[str, int] = msgspec.field(default_factory=dict)
    outcomes: dict[str, SendOutcome] = msgspec.field(default_factory=dict)
    heard: tuple[Heard, ...] = ()
    holdout: bool = False


class EntryHistory(msgspec.Struct, frozen=True, array_like=True):
    """Per journey: when the profile last entered it and how often (for ``repeat``); ``paths``
    the path each ``sticky`` split first sent it down (split step id -> path index)."""

    last_entered_at: datetime
    entries: int = 1
    paths: dict[str, int] = msgspec.field(default_factory=dict)


class ProfileState(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    profile_id: str = ""
    user_id: str | None = None
    anonymous_id: str | None = None
    """The ids the profile's events carried last (``profile.user_id``, ``profile.anonymous_id``)."""
    traits: dict[str, Any] = msgspec.field(default_factory=dict)
    instances: tuple[Instance, ...] = ()
    history: dict[str, EntryHistory] = msgspec.field(default_factory=dict)
    seen: tuple[int, ...] = ()
    """Fingerprints (:func:`input_fingerprint`) of the most recent inputs applied, so applying
    one again changes nothing. 64-bit hashes keep the state small."""


def input_fingerprint(key: str) -> int:
    """A stable 64-bit fingerprint of an input key (a message id)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ProfileState)


def encode_state(state: ProfileState) -> bytes:
    try:
        return _encoder.encode(state)
    except OverflowError:
        # An integer beyond 64 bits in an event or trait (JSON allows it, MessagePack does not):
        # keep it as the nearest float, as a JavaScript client would have seen it.
        return _encoder.encode(
            msgspec.convert(_wide_ints_to_floats(msgspec.to_builtins(state)), ProfileState)
        )


def _wide_ints_to_floats(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -(2**63) <= value < 2**64 else float(value)
    if isinstance(value, dict):
        return {k: _wide_ints_to_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_wide_ints_to_floats(v) for v in value]
    return value


def decode_state(data: bytes) -> ProfileState:
    return _decoder.decode(data)
