"""One input's worth of work on one profile: exits, goals, waits, entries and timers."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from msgspec.structs import replace

from cairn_journey.catalogue import CompiledJourney
from cairn_journey.conditions import MISSING, Scope, matches, resolve
from cairn_journey.correlation import DELIVERY_ID_PROPERTY
from cairn_journey.effects import InstanceConverted, InstanceStarted, TimerCancelled
from cairn_journey.model import RepeatAfter, WaitForStep
from cairn_journey.state import EntryHistory, Instance, TriggerEvent
from cairn_journey.stepping import StepRunner, make_id, unique_key

__all__ = ["ProfileRun", "make_id", "unique_key"]


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
        self._waits(name, key, scope, timestamp)
        for compiled in self.catalogue.by_trigger.get(name, ()):
            self._enter(compiled, name, key, scope, timestamp)

    def _correlates(self, match: str | None, instance: Instance, scope: Scope) -> bool:
        if match is None:
            return True
        value = resolve(match, scope)
        return (
            value is not MISSING
            and value is not None
            and (unique_key(value) == instance.unique_value)
        )

    def _exits(self, name: str, scope: Scope) -> None:
        for instance in list(self.instances.values()):
            compiled = self.catalogue.get(instance.journey, instance.version)
            rules = compiled.exits.get(name) if compiled is not None else None
            if rules and any(
                self._correlates(rule.match, instance, scope) and matches(rule.where, scope)
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
            or not self._correlates(goal.match, instance, scope)
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
        return replace(instance, converted=True)

    def _waits(self, name: str, key: str, scope: Scope, timestamp: datetime | None) -> None:
        for instance in list(self.instances.values()):
            pending = instance.pending
            if pending is None or pending.kind != "wait_for":
                continue
            compiled = self.catalogue.get(instance.journey, instance.version)
            step = compiled.steps.get(pending.step_id) if compiled is not None else None
            if compiled is None or not isinstance(step, WaitForStep):
                continue
            spec = step.wait_for
            if spec.event != name or not matches(spec.where, scope):
                continue
            if spec.of is not None:
                sent = instance.sends.get(spec.of)
                if sent is None or resolve(DELIVERY_ID_PROPERTY, scope) != sent:
                    continue
            elif not self._correlates(spec.match, instance, scope):
                continue
            self.effects.append(TimerCancelled(timer_id=pending.timer_id))
            record = {"event": name, "message_id": key, "properties": _as_dict(scope.properties)}
            if timestamp is not None:
                record["timestamp"] = timestamp.isoformat()
            instance = replace(
                instance, pending=None, matched={**instance.matched, step.id: record}
            )
            self.count(compiled, step.id, "matched")
            first = spec.matched[0] if spec.matched else compiled.next_step[step.id]
            self.proceed(instance, compiled, first)

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
        self._start(
            compiled,
            Instance(
                id=instance_id,
                journey=journey.name,
                version=compiled.version,
                unique_value=unique,
                started_at=self.now,
                trigger=trigger,
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
        entries = history.entries + 1 if history is not None else 1
        self.history = {
            **self.history,
            compiled.name: EntryHistory(last_entered_at=self.now, entries=entries),
        }
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
        self.count(compiled, "", "entered")
        self.proceed(instance, compiled, compiled.first)

    # ------------------------------------------------------------------ timers

    def on_timer(self, instance: Instance, compiled: CompiledJourney) -> None:
        pending = instance.pending
        assert pending is not None
        if self.now - instance.started_at >= self.catalogue.limits.instance_lifetime:
            self.end(instance, "exited", "lifetime", "exited:lifetime", cancel=False)
            return
        step = compiled.steps.get(pending.step_id)
        instance = replace(instance, pending=None)
        if isinstance(step, WaitForStep):
            self.count(compiled, step.id, "timed_out")
            spec = step.wait_for
            first = spec.timed_out[0] if spec.timed_out else compiled.next_step[step.id]
            self.proceed(instance, compiled, first)
        else:
            self.proceed(instance, compiled, compiled.next_step.get(pending.step_id))

    # ------------------------------------------------------------------ steps


def _as_dict(value: Mapping[str, Any]) -> dict[str, Any]:
    """The event's own dict (events are never changed after decoding), or a copy of a mapping."""
    return value if type(value) is dict else dict(value)
