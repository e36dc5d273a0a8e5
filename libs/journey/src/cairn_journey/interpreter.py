"""The journey interpreter: a pure function of (profile state, one input, catalogue, time).

No I/O and no clock of its own: the same state, input, catalogue and ``now`` always give the same
new state and effects, ids included, so a redelivered input reproduces what it did before. The
given state is never changed (the structs are frozen); a new one is returned.

Order within one event (documented in docs/journeys.md): **exits** first (an exited instance does
nothing more), then **goals** (conversion), then **wait_for** steps waiting for the event, then
**entries** (so an event that starts an instance never also satisfies that instance's own
``wait_for``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cairn_common.messages import (
    DeliveryResult,
    Event,
    ExitInstances,
    ProfileInput,
    TimerFired,
)
from cairn_journey.catalogue import Catalogue, CompiledJourney
from cairn_journey.correlation import (
    delivery_event_name,
    delivery_event_properties,
    journey_event_name,
    journey_event_properties,
)
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
from cairn_journey.run import ProfileRun
from cairn_journey.state import ProfileState, decode_state, encode_state, input_fingerprint

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

SEEN_KEPT = 16
"""How many recent input keys a profile remembers so that a repeated input changes nothing."""


def run_input(
    state: ProfileState, inp: ProfileInput, *, catalogue: Catalogue, now: datetime
) -> tuple[ProfileState, list[Effect]]:
    """Apply one input to a profile's state; return the new state and the effects, in order."""
    if isinstance(inp, TimerFired):
        return _timer(state, inp, catalogue, now)
    if isinstance(inp, ExitInstances):
        return _exit_all(state, inp, catalogue, now)
    if isinstance(inp, Event):
        identify = inp.type == "identify"
        new_ids = (inp.user_id or state.user_id, inp.anonymous_id or state.anonymous_id) != (
            state.user_id,
            state.anonymous_id,
        )
        if identify and not inp.traits and not new_ids:
            return state, []
        name = journey_event_name(inp)
        if not identify and not catalogue.interested(name):
            return state, []  # no journey can react: nothing to remember either
        fingerprint = input_fingerprint(inp.dedupe_key)  # a repeat within its source
        if fingerprint in state.seen:
            return state, []
        run = ProfileRun(state, inp.profile_id, catalogue, now)
        run.accepted = min(inp.received_at, now)
        run.note_ids(inp.user_id, inp.anonymous_id)
        if identify:
            run.merge_traits(inp.traits)
        elif name:
            run.expire()
            scope = run.scope(journey_event_properties(inp), inp.context, name)
            run.on_event(name, inp.message_id, scope, inp.timestamp)
        run.remember(fingerprint, SEEN_KEPT)
        return run.finish()
    return _delivery_result(state, inp, catalogue, now)


_EMPTY: dict[str, Any] = {}


def _delivery_result(
    state: ProfileState, inp: DeliveryResult, catalogue: Catalogue, now: datetime
) -> tuple[ProfileState, list[Effect]]:
    """A delivery result finishes the send step waiting on it, then acts as the event
    :func:`delivery_event_name` names."""
    name = delivery_event_name(inp)
    key = f"{inp.delivery_id}:{inp.outcome}"
    fingerprint = input_fingerprint(key)
    if name is None or fingerprint in state.seen:
        return state, []  # ``deferred``: it will be tried again, the instance keeps waiting
    run = ProfileRun(state, inp.profile_id, catalogue, now)
    run.accepted = min(inp.at, now)
    run.expire()
    run.on_outcome(inp)
    scope = run.scope(delivery_event_properties(inp), _EMPTY, name)
    run.on_event(name, key, scope, inp.at)
    run.remember(fingerprint, SEEN_KEPT)
    return run.finish()


def _timer(
    state: ProfileState, inp: TimerFired, catalogue: Catalogue, now: datetime
) -> tuple[ProfileState, list[Effect]]:
    for instance in state.instances:
        if instance.id == inp.instance_id:
            pending = instance.pending
            if pending is None or pending.timer_id != inp.timer_id:
                return state, []  # stale: cancelled, already fired, or a later visit's timer
            compiled = catalogue.get(instance.journey, instance.version)
            if compiled is None:
                return state, []  # version not loaded: keep the instance, change nothing
            run = ProfileRun(state, inp.profile_id, catalogue, now)
            run.on_timer(instance, compiled, after_outage=inp.after_outage)
            return run.finish()
    return state, []


def _exit_all(
    state: ProfileState, inp: ExitInstances, catalogue: Catalogue, now: datetime
) -> tuple[ProfileState, list[Effect]]:
    if not any(i.journey == inp.journey for i in state.instances):
        return state, []
    run = ProfileRun(state, inp.profile_id, catalogue, now)
    for instance in state.instances:
        if instance.journey == inp.journey:
            run.end(instance, "exited", inp.reason, f"exited:{inp.reason}")
    return run.finish()
