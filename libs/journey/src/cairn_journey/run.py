"""One input's worth of work on one profile: exits, goals, waits, entries and timers."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from msgspec.structs import replace

from cairn_common.messages import DeliveryResult
from cairn_journey.catalogue import CompiledJourney
from cairn_journey.conditions import MISSING, Scope, matches, resolve
from cairn_journey.correlation import DELIVERY_ID_PROPERTY
from cairn_journey.effects import InstanceConverted, InstanceStarted, TimerCancelled, TimerSet
from cairn_journey.model import RepeatAfter, SendStep, WaitForStep
from cairn_journey.state import EntryHistory, Instance, Pending, SendOutcome, TriggerEvent
from cairn_journey.stepping import (
    StepRunner,
    can_come,
    holdout_point,
    make_id,
    unique_key,
    with_path,
)

__all__ = ["LATE_GRACE", "ProfileRun", "make_id", "unique_key"]

LATE_GRACE = timedelta(seconds=3)
"""How much longer a window whose timer came through an outage waits, once, for inputs accepted
inside it and still on their way: longer than ingest's tracking backlog takes to retry (2 s at
most once the stream is back)."""


class ProfileRun(StepRunner):
    """Applies one input to one profile (see :func:`cairn_journey.interpreter.run_input`)."""

    def expire(self) -> None:
        """End instances that outlived the instance lifetime limit."""
        lifetime = self.catalogue.limits.instance_lifetime
        for instance in list(self.instances.values()):
            if self.now - instance.started_at >= lifetime:
                self.end(instance, "exited", "lifetime", "exited:lifetime")

    # ------------------------------------------------------------------ events

    def on_event(self, name: str, key: str, scope: Scope, timestamp: datetime | None) -> None:
        self._exits(name, scope)
        self._goals(name, scope)
        consumed = self._waits(name, key, scope, timestamp)
        self._hear(name, key, scope, timestamp, consumed)
        for compiled in self.catalogue.by_trigger.get(name, ()):
            self._enter(compiled, name, key, scope, timestamp)

    def _exits(self, name: str, scope: Scope) -> None:
        for instance in list(self.instances.values()):
            compiled = self.catalogue.get(instance.journey, instance.version)
            rules = compiled.exits.get(name) if compiled is not None else None
            if rules and any(
                self.correlates(rule.match, instance, scope) and matches(rule.where, scope)
                for rule in rules
            ):
                # The event that ends the instance may also be its goal (a completed order):
                # the conversion counts, then the instance exits.
                instance = self._convert_if_goal(instance, compiled, name, scope)
                self.end(instance, "exited", f"exit:{name}", f"exited:{name}")

    def _goals(self, name: str, scope: Scope) -> None:
        for instance in list(self.instances.values()):
            compiled = self.catalogue.get(instance.journey, instance.version)
            self.instances[instance.id] = self._convert_if_goal(instance, compiled, name, scope)

    def _convert_if_goal(
        self, instance: Instance, compiled: CompiledJourney | None, name: str, scope: Scope
    ) -> Instance:
        goal = compiled.journey.goal if compiled is not None else None
        if (
            instance.converted
            or goal is None
            or goal.event != name
            or not self.correlates(goal.match, instance, scope)
            or not matches(goal.where, scope)
        ):
            return instance
        self.effects.append(
            InstanceConverted(
                instance_id=instance.id,
                journey=instance.journey,
                version=instance.version,
                converted_at=self.now,
            )
        )
        self.count_instance(instance, "converted")
        self.count_paths(instance, compiled, "converted")
        return replace(instance, converted=True)

    def _waits(self, name: str, key: str, scope: Scope, timestamp: datetime | None) -> set[str]:
        """Satisfy the ``wait_for`` steps this event ends; the ids of the instances it moved."""
        consumed: set[str] = set()
        for instance in list(self.instances.values()):
            pending = instance.pending
            if pending is None or pending.kind != "wait_for":
                continue
            compiled = self.catalogue.get(instance.journey, instance.version)
            step = compiled.steps.get(pending.step_id) if compiled is not None else None
            if compiled is None or not isinstance(step, WaitForStep):
                continue
            if self.accepted >= pending.due_at:
                continue  # accepted after the window closed: its timer decides (timed_out)
            spec = step.wait_for
            index = next(
                (
                    i
                    for i, awaited in enumerate(compiled.awaits[step.id])
                    if awaited.event == name and self.takes(awaited, instance, scope)
                ),
                None,
            )
            if index is None:
                if any(r.event == name and self.takes(r, instance, scope) for r in spec.reset_on):
                    consumed.add(instance.id)
                    self._reset(instance, compiled, step)
                continue
            consumed.add(instance.id)
            self.effects.append(TimerCancelled(timer_id=pending.timer_id))
            record = with_path(_record(name, key, scope, timestamp), spec, index)
            instance = replace(
                instance, pending=None, matched={**instance.matched, step.id: record}
            )
            self.proceed(instance, compiled, self.path_taken(compiled, step, index, instance))
        return consumed

    def _reset(self, instance: Instance, compiled: CompiledJourney, step: WaitForStep) -> None:
        """A ``reset_on`` event: the wait starts again, a whole ``within`` from now."""
        pending = instance.pending
        assert pending is not None
        self.effects.append(TimerCancelled(timer_id=pending.timer_id))
        timer_id = make_id("tm_", instance.id, step.id, f"{pending.timer_id}:reset")
        self.count(compiled, step.id, "reset", instance)
        self.park_wait_for(instance, step, timer_id, self.now + step.wait_for.within)

    def _hear(
        self, name: str, key: str, scope: Scope, timestamp: datetime | None, consumed: set[str]
    ) -> None:
        """Keep an event a later ``wait_for`` of the instance may need: any it listens for
        while the instance waits on a send's outcome (an open can overtake the email's result),
        and one naming a send that a ``wait_for … of:`` refers to."""
        delivery: Any = None
        for instance in list(self.instances.values()):
            compiled = self.catalogue.get(instance.journey, instance.version)
            if instance.id in consumed or compiled is None:
                continue
            if name not in compiled.wait_for_events:
                continue
            pending = instance.pending
            if pending is None or pending.kind != "send":
                if delivery is None:
                    delivery = resolve(DELIVERY_ID_PROPERTY, scope)
                if delivery is MISSING or not any(
                    instance.sends.get(s) == delivery for s in compiled.awaited_sends
                ):
                    continue
            self.hear(instance, _record(name, key, scope, timestamp))

    # ------------------------------------------------------------------ outcomes

    def on_outcome(self, result: DeliveryResult) -> None:
        """A send's outcome is known: the instance waiting on it moves on, counting its next
        wait from when the message was sent. A late result (after the instance moved on as
        ``unknown``) re-times a ``wait_for … of:`` that send."""
        if result.outcome == "deferred":
            return  # it will be tried again; the instance keeps waiting
        instance = self.instances.get(result.instance_id)
        if instance is None or instance.sends.get(result.step_id) != result.delivery_id:
            return  # ended, or an earlier visit's message
        prior = instance.outcomes.get(result.step_id)
        compiled = self.catalogue.get(instance.journey, instance.version)
        if (prior is not None and prior.outcome != "unknown") or compiled is None:
            return
        outcome = SendOutcome(result.outcome, min(result.at, self.now), result.reason)
        instance = replace(instance, outcomes={**instance.outcomes, result.step_id: outcome})
        self.instances[instance.id] = instance
        pending = instance.pending
        if pending is None:
            return
        if pending.kind == "send" and pending.step_id == result.step_id:
            self.effects.append(TimerCancelled(timer_id=pending.timer_id))
            following = compiled.next_step[result.step_id]
            self.proceed(replace(instance, pending=None), compiled, following, since=outcome.at)
            return
        step = compiled.steps.get(pending.step_id)
        if (
            prior is not None
            and isinstance(step, WaitForStep)
            and compiled.anchors[step.id] == result.step_id
        ):
            self._retime(instance, compiled, step, outcome)

    def _retime(
        self, instance: Instance, compiled: CompiledJourney, step: WaitForStep, outcome: SendOutcome
    ) -> None:
        """A late outcome of the send the wait's window counts from: re-time the window from
        the real sending, or end it if nothing it waits for can come any more."""
        pending = instance.pending
        assert pending is not None
        spec = step.wait_for
        if not any(
            can_come(a, instance.outcomes, instance.sends) for a in compiled.awaits[step.id]
        ):
            self.effects.append(TimerCancelled(timer_id=pending.timer_id))
            instance = replace(instance, pending=None)
            self.proceed(instance, compiled, self.not_sent(compiled, step, outcome, instance))
            return
        if outcome.not_sent:
            return  # other paths can still come: their window stays as it was
        self.effects.append(TimerCancelled(timer_id=pending.timer_id))
        instance = replace(instance, pending=None)
        due = outcome.at + spec.within
        visit = instance.visits.get(step.id, 1)
        timer_id = make_id("tm_", instance.id, step.id, f"{visit}:{outcome.outcome}")
        self.park_wait_for(instance, step, timer_id, due)

    # ------------------------------------------------------------------ entry

    def _refuse(self, compiled: CompiledJourney, why: str) -> None:
        self.count(compiled, "", f"skipped:{why}")

    def _enter(
        self,
        compiled: CompiledJourney,
        name: str,
        key: str,
        scope: Scope,
        timestamp: datetime | None,
    ) -> None:
        journey = compiled.journey
        if not matches(journey.trigger.where, scope):
            return
        unique: str | None = None
        if journey.entry.unique_by is not None:
            value = resolve(journey.entry.unique_by, scope)
            if value is MISSING or value is None:
                self._refuse(compiled, "no_unique_value")
                return
            unique = unique_key(value)
        instance_id = make_id("in_", journey.name, self.profile_id, key)
        if instance_id in self.instances:
            return  # this very event already started it
        refusal = self._refusal(compiled, unique)
        if refusal is not None:
            self._refuse(compiled, refusal)
            return
        trigger = TriggerEvent(
            name=name,
            message_id=key,
            properties=_as_dict(scope.properties),
            context=_as_dict(scope.context),
            timestamp=timestamp,
        )
        held = journey.holdout is not None and (
            holdout_point(self.profile_id, journey.name) < journey.holdout
        )
        self._start(
            compiled,
            Instance(
                id=instance_id,
                journey=journey.name,
                version=compiled.version,
                unique_value=unique,
                started_at=self.now,
                trigger=trigger,
                holdout=held,
            ),
        )

    def _refusal(self, compiled: CompiledJourney, unique: str | None) -> str | None:
        """Why the entry rules refuse a new instance now, or ``None``."""
        entry = compiled.journey.entry
        if (entry.start_at is not None and self.now < entry.start_at) or (
            entry.end_at is not None and self.now >= entry.end_at
        ):
            return "outside_window"
        history = self.history.get(compiled.name)
        if history is not None:
            if entry.repeat == "once":
                return "repeat_once"
            if (
                isinstance(entry.repeat, RepeatAfter)
                and self.now - history.last_entered_at < entry.repeat.after
            ):
                return "cooldown"
        if any(
            i.journey == compiled.name and i.unique_value == unique for i in self.instances.values()
        ):
            return "already_active"
        if len(self.instances) >= self.catalogue.limits.instances_per_profile:
            return "instance_limit"
        return None

    def _start(self, compiled: CompiledJourney, instance: Instance) -> None:
        history = self.history.get(compiled.name)
        entered = (
            EntryHistory(last_entered_at=self.now)
            if history is None
            else replace(history, last_entered_at=self.now, entries=history.entries + 1)
        )
        self.history = {**self.history, compiled.name: entered}
        self.effects.append(
            InstanceStarted(
                instance_id=instance.id,
                journey=instance.journey,
                version=instance.version,
                unique_value=instance.unique_value,
                started_at=self.now,
                profile_id=self.profile_id,
                trigger_message_id=instance.trigger.message_id,
            )
        )
        self.count(compiled, "", "entered", instance)
        self.proceed(instance, compiled, compiled.first)

    # ------------------------------------------------------------------ timers

    def on_timer(
        self, instance: Instance, compiled: CompiledJourney, *, after_outage: bool = False
    ) -> None:
        pending = instance.pending
        assert pending is not None
        if self.now - instance.started_at >= self.catalogue.limits.instance_lifetime:
            self.end(instance, "exited", "lifetime", "exited:lifetime", cancel=False)
            return
        step = compiled.steps.get(pending.step_id)
        instance = replace(instance, pending=None)
        if isinstance(step, SendStep):
            self.outcome_unknown(instance, compiled, step)
        elif isinstance(step, WaitForStep):
            due = pending.due_at
            if after_outage and not pending.graced:
                self.grace(instance, step, pending)
                return
            self.proceed(instance, compiled, self.timed_out(compiled, step, instance), since=due)
        else:
            self.proceed(instance, compiled, compiled.next_step.get(pending.step_id))

    def grace(self, instance: Instance, step: WaitForStep, pending: Pending) -> None:
        """A window's timer that the inputs stream refused at least once came through an outage
        (a NATS election or restart). What the customer did inside the window may have been
        accepted and still be on its way (ingest keeps tracking hits JetStream could not take
        yet, and retries them as the scheduler retries its fires): wait ``LATE_GRACE`` more,
        once, before timing the window out. It still ends at ``due_at``: an input accepted
        after it never matches."""
        timer_id = make_id("tm_", instance.id, pending.timer_id, "grace")
        self.effects.append(
            TimerSet(
                timer_id=timer_id,
                instance_id=instance.id,
                step_id=step.id,
                due_at=self.now + LATE_GRACE,
                kind="wait_for",
            )
        )
        self.instances[instance.id] = replace(
            instance, pending=replace(pending, timer_id=timer_id, graced=True)
        )

    # ------------------------------------------------------------------ steps


def _record(name: str, key: str, scope: Scope, timestamp: datetime | None) -> dict[str, Any]:
    """How a matched (or early) event is kept: ``steps.<id>.event`` in templates reads it."""
    record: dict[str, Any] = {
        "event": name,
        "message_id": key,
        "properties": _as_dict(scope.properties),
    }
    if timestamp is not None:
        record["timestamp"] = timestamp.isoformat()
    return record


def _as_dict(value: Mapping[str, Any]) -> dict[str, Any]:
    """The event's own dict (events are never changed after decoding), or a copy of a mapping."""
    return value if type(value) is dict else dict(value)
