"""Running a journey's steps for one instance: sends, waits, branches, splits, endings.

The base of :class:`cairn_journey.run.ProfileRun`; it holds the working copy of one profile's
state while one input is applied.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from msgspec.structs import replace

from cairn_common.messages import DeliveryRequested
from cairn_journey.catalogue import Catalogue, CompiledJourney
from cairn_journey.conditions import Scope, matches, resolve
from cairn_journey.effects import (
    Counted,
    Effect,
    InstanceEnded,
    SendRequested,
    TimerCancelled,
    TimerSet,
)
from cairn_journey.model import BranchStep, SendStep, SplitStep, Step, WaitForStep, WaitStep
from cairn_journey.state import Instance, Pending, ProfileState
from cairn_journey.timing import wait_until

_SEP = "\x1f"


def make_id(prefix: str, a: str, b: str, c: str | int) -> str:
    """A deterministic id from three parts: the same parts always give the same id."""
    text = f"{a}\x1f{b}\x1f{c}"
    return prefix + hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def unique_key(value: Any) -> str:
    """The string form of a unique value (``42`` and ``"42"`` are the same cart)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def split_point(instance_id: str, step_id: str) -> float:
    """Where an instance falls in ``[0, 100)`` for a split: a hash, sticky per instance."""
    digest = hashlib.blake2b(f"{instance_id}{_SEP}{step_id}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") % 1_000_000) / 10_000


class StepRunner:
    """Working copy of one profile's state while one input is applied, and the step machine."""

    def __init__(
        self, state: ProfileState, profile_id: str, catalogue: Catalogue, now: datetime
    ) -> None:
        self.state = state
        self.profile_id = profile_id or state.profile_id
        self.catalogue = catalogue
        self.now = now
        self.traits: dict[str, Any] = state.traits
        self.instances: dict[str, Instance] = {i.id: i for i in state.instances}
        self.history = state.history
        self.seen = state.seen
        self.effects: list[Effect] = []

    def finish(self) -> tuple[ProfileState, list[Effect]]:
        state = ProfileState(
            profile_id=self.profile_id,
            traits=self.traits,
            instances=tuple(self.instances.values()),
            history=self.history,
            seen=self.seen,
        )
        return state, self.effects

    def merge_traits(self, traits: Mapping[str, Any]) -> None:
        self.traits = {**self.traits, **traits}

    def remember(self, key: int, keep: int) -> None:
        self.seen = (*self.seen[-(keep - 1) :], key)

    def count(self, compiled: CompiledJourney, step_id: str, counter: str) -> None:
        self.effects.append(
            Counted(
                journey=compiled.name, version=compiled.version, step_id=step_id, counter=counter
            )
        )

    def count_instance(self, instance: Instance, counter: str) -> None:
        """A journey-level counter for a running instance's journey version."""
        self.effects.append(
            Counted(journey=instance.journey, version=instance.version, step_id="", counter=counter)
        )

    def end(
        self,
        instance: Instance,
        status: Literal["completed", "exited"],
        reason: str,
        counter: str,
        *,
        cancel: bool = True,
    ) -> None:
        if cancel and instance.pending is not None:
            self.effects.append(TimerCancelled(timer_id=instance.pending.timer_id))
        self.effects.append(
            InstanceEnded(
                instance_id=instance.id,
                journey=instance.journey,
                version=instance.version,
                status=status,
                reason=reason,
                ended_at=self.now,
            )
        )
        self.count_instance(instance, counter)
        self.instances.pop(instance.id, None)

    def _trigger_scope(self, instance: Instance) -> Scope:
        trigger = instance.trigger
        return Scope(trigger.properties, trigger.context, self.traits, trigger.name)

    def proceed(self, instance: Instance, compiled: CompiledJourney, step: Step | None) -> None:
        """Run steps from ``step`` until one waits or the journey's list ends (completion).

        The instance's bookkeeping (visits, sends, splits) is collected in locals and written
        once, when the instance parks at a wait or ends: one new struct per input, not per step.
        """
        visits = dict(instance.visits)
        sends = instance.sends
        splits = instance.splits
        while step is not None:
            step_id = step.id
            visit = visits.get(step_id, 0) + 1
            visits[step_id] = visit
            self.count(compiled, step_id, "reached")
            following = compiled.next_step[step_id]
            due: datetime | None = None
            if type(step) is SendStep:
                delivery_id = self._send(instance, compiled, step, visit)
                if delivery_id is not None:
                    sends = {**sends, step_id: delivery_id}
            elif type(step) is WaitStep:
                due = wait_until(step.wait, self._trigger_scope(instance), self.traits, self.now)
                if due is not None and due <= self.now:
                    due = None  # already past: carry on at once
            elif type(step) is WaitForStep:
                due = self.now + step.wait_for.within
            elif type(step) is BranchStep:
                following = self._branch(instance, compiled, step, following)
            elif type(step) is SplitStep:
                chosen, following = self._split(instance, compiled, step, following)
                splits = {**splits, step_id: chosen}
            if due is not None:
                kind: Literal["wait", "wait_for"] = "wait" if type(step) is WaitStep else "wait_for"
                due = min(due, self.now + self.catalogue.limits.max_wait)
                timer_id = make_id("tm_", instance.id, step_id, visit)
                self.effects.append(
                    TimerSet(
                        timer_id=timer_id,
                        instance_id=instance.id,
                        step_id=step_id,
                        due_at=due,
                        kind=kind,
                    )
                )
                self.instances[instance.id] = replace(
                    instance,
                    position=step_id,
                    visits=visits,
                    sends=sends,
                    splits=splits,
                    pending=Pending(step_id=step_id, timer_id=timer_id, kind=kind, due_at=due),
                )
                return
            step = following
        self.end(instance, "completed", "completed", "completed")

    def _send(
        self, instance: Instance, compiled: CompiledJourney, step: SendStep, visit: int
    ) -> str | None:
        """Request the send; the delivery id, or ``None`` when skipped for want of an address."""
        send = step.send
        address: str | None = None
        if send.to is not None:
            address = _address(resolve(send.to, self._trigger_scope(instance)))
            if address is None:
                self.count(compiled, step.id, "skipped:no_address")
                return None
        delivery_id = make_id("dl_", instance.id, step.id, visit)
        trigger = instance.trigger
        event: dict[str, Any] = {
            "event": trigger.name,
            "message_id": trigger.message_id,
            "properties": trigger.properties,
            "context": trigger.context,
        }
        if trigger.timestamp is not None:
            event["timestamp"] = trigger.timestamp.isoformat()
        request = DeliveryRequested(
            delivery_id=delivery_id,
            profile_id=self.profile_id,
            journey=instance.journey,
            version=instance.version,
            instance_id=instance.id,
            step_id=step.id,
            visit=visit,
            requested_at=self.now,
            channel=send.channel,
            destination=send.destination,
            template=send.template,
            to=send.to,
            address=address,
            profile=self.traits,
            event=event,
            matched_events=instance.matched,
            unique_value=instance.unique_value,
        )
        self.effects.append(SendRequested(delivery=request))
        self.count(compiled, step.id, "send_requested")
        return delivery_id

    def _branch(
        self,
        instance: Instance,
        compiled: CompiledJourney,
        step: BranchStep,
        following: Step | None,
    ) -> Step | None:
        scope = self._trigger_scope(instance)
        for index, case in enumerate(step.branch.cases):
            if matches(case.when, scope):
                self.count(compiled, step.id, f"branch:{case.name or index}")
                return case.steps[0] if case.steps else following
        self.count(compiled, step.id, "branch:otherwise")
        otherwise = step.branch.otherwise
        return otherwise[0] if otherwise else following

    def _split(
        self,
        instance: Instance,
        compiled: CompiledJourney,
        step: SplitStep,
        following: Step | None,
    ) -> tuple[int, Step | None]:
        point = split_point(instance.id, step.id)
        chosen = len(step.split) - 1
        total = 0.0
        for index, path in enumerate(step.split):
            total += path.percent
            if point < total:
                chosen = index
                break
        path = step.split[chosen]
        self.count(compiled, step.id, f"split:{path.name or chosen}")
        return chosen, (path.steps[0] if path.steps else following)


def _address(value: Any) -> str | None:
    """An address from a property: a non-empty string (or number); for a list (e.g. several
    push tokens) the first non-empty string."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return unique_key(value)
    if isinstance(value, list):
        for item in value:
            if isinstance(item, str) and item.strip():
                return item.strip()
    return None
