"""Small helpers for driving the interpreter in tests: a profile, a clock and a catalogue."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from cairn_common.messages import DeliveryResult, Event, ExitInstances, ProfileInput, TimerFired
from cairn_journey.documents import parse_text
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
from cairn_journey.interpreter import Catalogue, run_input
from cairn_journey.model import Journey
from cairn_journey.state import ProfileState, decode_state, encode_state

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def journey(text: str) -> Journey:
    result = parse_text(textwrap.dedent(text), "test.yaml")
    assert not result.problems, [str(p) for p in result.problems]
    (doc,) = result.documents
    assert isinstance(doc, Journey)
    return doc


def example(name: str) -> Journey:
    return journey((EXAMPLES / "journeys" / f"{name}.yaml").read_text())


def catalogue(*journeys: Journey, live: dict[str, int] | None = None, **limits: Any) -> Catalogue:
    from cairn_journey.validate import Limits

    versions = {(j.name, 1): j for j in journeys}
    return Catalogue(
        versions,
        live if live is not None else {j.name: 1 for j in journeys},
        limits=Limits(**limits),
    )


class Profile:
    """One profile driven through the interpreter, with a clock and a log of every effect.

    State goes through encode/decode after every input, as it does in the matcher.

    With ``dispatch=True`` (the default) every requested send is reported ``sent`` at once, as a
    dispatcher with no backlog would; with ``dispatch=False`` the test reports outcomes itself
    (:meth:`result`) and ``requested`` lists the sends still waiting for one.
    """

    def __init__(
        self,
        cat: Catalogue,
        profile_id: str = "user-1",
        now: datetime = T0,
        *,
        dispatch: bool = True,
    ) -> None:
        self.catalogue = cat
        self.profile_id = profile_id
        self.now = now
        self.state = ProfileState(profile_id=profile_id)
        self.log: list[Effect | TimerFiredMark] = []
        self._seq = 0
        self.dispatch = dispatch

    def apply(self, inp: ProfileInput) -> list[Effect]:
        state, effects = run_input(self.state, inp, catalogue=self.catalogue, now=self.now)
        self.state = decode_state(encode_state(state))
        self.log.extend(effects)
        if self.dispatch:
            for effect in list(effects):
                if isinstance(effect, SendRequested):
                    effects.extend(self.result(effect, "sent"))
        return effects

    def requested(self) -> list[SendRequested]:
        """Sends whose instance still waits for their outcome."""
        waiting = {
            (i.id, i.pending.step_id)
            for i in self.state.instances
            if i.pending is not None and i.pending.kind == "send"
        }
        return [
            e
            for e in self.log
            if isinstance(e, SendRequested)
            and (e.delivery.instance_id, e.delivery.step_id) in waiting
            and any(
                i.sends.get(e.delivery.step_id) == e.delivery.delivery_id
                for i in self.state.instances
            )
        ]

    def _id(self) -> str:
        self._seq += 1
        return f"msg-{self._seq}"

    def track(
        self,
        name: str,
        message_id: str | None = None,
        *,
        write_key: str | None = None,
        **properties: Any,
    ) -> list[Effect]:
        return self.apply(
            Event(
                message_id=message_id or self._id(),
                write_key=write_key,
                type="track",
                profile_id=self.profile_id,
                partition=0,
                received_at=self.now,
                timestamp=self.now,
                event=name,
                properties=properties,
            )
        )

    def identify(self, **traits: Any) -> list[Effect]:
        return self.apply(
            Event(
                message_id=self._id(),
                type="identify",
                profile_id=self.profile_id,
                partition=0,
                received_at=self.now,
                timestamp=self.now,
                traits=traits,
            )
        )

    def advance(self, delta: timedelta) -> None:
        self.now += delta

    def pending_timers(self) -> list[TimerSet]:
        """Timers set and neither fired nor cancelled yet (what the scheduler holds)."""
        live: dict[str, TimerSet] = {}
        for effect in self.log:
            if isinstance(effect, TimerSet):
                live[effect.timer_id] = effect
            elif isinstance(effect, (TimerCancelled, TimerFiredMark)):
                live.pop(effect.timer_id, None)
        return list(live.values())

    def fire(self, timer: TimerSet, *, after_outage: bool = False) -> list[Effect]:
        """Move the clock to the timer's due time and fire it, as the scheduler would
        (``after_outage``: as it does once the stream took a fire it had refused)."""
        self.now = max(self.now, timer.due_at)
        self.log.append(TimerFiredMark(timer_id=timer.timer_id))
        return self.apply(
            TimerFired(
                timer_id=timer.timer_id,
                profile_id=self.profile_id,
                partition=0,
                instance_id=timer.instance_id,
                step_id=timer.step_id,
                due_at=timer.due_at,
                fired_at=self.now,
                kind=timer.kind,
                after_outage=after_outage,
            )
        )

    def fire_next(self) -> list[Effect]:
        timers = sorted(self.pending_timers(), key=lambda t: (t.due_at, t.timer_id))
        assert timers, "no timer is pending"
        return self.fire(timers[0])

    def result(self, send: SendRequested, outcome: str, **extra: Any) -> list[Effect]:
        d = send.delivery
        extra.setdefault("at", self.now)
        return self.apply(
            DeliveryResult(
                delivery_id=d.delivery_id,
                profile_id=self.profile_id,
                partition=0,
                instance_id=d.instance_id,
                step_id=d.step_id,
                outcome=outcome,  # type: ignore[arg-type]
                channel=d.channel,
                destination=d.destination,
                **extra,
            )
        )

    def exit_all(self, journey: str, reason: str = "stopped") -> list[Effect]:
        return self.apply(
            ExitInstances(profile_id=self.profile_id, partition=0, journey=journey, reason=reason)
        )

    # ------------------------------------------------------------------ what a user observes

    def sends(self, effects: Iterable[object] | None = None) -> list[str]:
        return [
            e.delivery.step_id
            for e in (self.log if effects is None else effects)
            if isinstance(e, SendRequested)
        ]

    def ended(self) -> list[tuple[str, str]]:
        return [(e.status, e.reason) for e in self.log if isinstance(e, InstanceEnded)]

    def started(self) -> list[InstanceStarted]:
        return [e for e in self.log if isinstance(e, InstanceStarted)]

    def converted(self) -> list[InstanceConverted]:
        return [e for e in self.log if isinstance(e, InstanceConverted)]

    def counters(self) -> list[tuple[str, str]]:
        return [(e.step_id, e.counter) for e in self.log if isinstance(e, Counted)]

    def positions(self) -> list[str]:
        return [i.position for i in self.state.instances]


class TimerFiredMark(msgspec.Struct, frozen=True, kw_only=True):
    """A marker in the test log: the scheduler fired this timer."""

    timer_id: str
