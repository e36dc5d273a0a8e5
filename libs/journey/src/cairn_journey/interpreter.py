"""The journey interpreter: a pure function of (profile state, one input, catalogue, time).

No I/O and no clock of its own: the same state, input, catalogue and ``now`` always give the same
new state and effects, ids included, so a redelivered input reproduces what it did before.
"""

from __future__ import annotations

from datetime import datetime

from cairn_common.messages import ProfileInput
from cairn_journey.catalogue import Catalogue, CompiledJourney
from cairn_journey.effects import (
    Counted,
    Effect,
    InstanceConverted,
    InstanceEnded,
    InstanceStarted,
    SendRequested,
    TimerCancelled,
    TimerSet,
)
from cairn_journey.state import ProfileState, decode_state, encode_state

__all__ = [
    "Catalogue",
    "CompiledJourney",
    "Counted",
    "Effect",
    "InstanceConverted",
    "InstanceEnded",
    "InstanceStarted",
    "ProfileState",
    "SendRequested",
    "TimerCancelled",
    "TimerSet",
    "decode_state",
    "encode_state",
    "run_input",
]


def run_input(
    state: ProfileState, inp: ProfileInput, *, catalogue: Catalogue, now: datetime
) -> tuple[ProfileState, list[Effect]]:
    """Apply one input to a profile's state; return the new state and the effects, in order."""
    raise NotImplementedError
