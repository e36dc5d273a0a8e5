"""One input's worth of work on one profile: the mechanics behind :func:`run_input`."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from msgspec.structs import replace

from cairn_common.messages import DeliveryRequested
from cairn_journey.catalogue import Catalogue, CompiledJourney
from cairn_journey.conditions import MISSING, Scope, matches, resolve
from cairn_journey.correlation import DELIVERY_ID_PROPERTY
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
from cairn_journey.model import (
    BranchStep,
    RepeatAfter,
    SendStep,
    SplitStep,
    Step,
    WaitForStep,
    WaitStep,
)
from cairn_journey.state import EntryHistory, Instance, Pending, ProfileState, TriggerEvent
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


class ProfileRun:
    """Working copy of one profile's state while one input is applied."""

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

    def remember(self, key: str, keep: int) -> None:
        self.seen = (*self.seen[-(keep - 1) :], key)

    def count(self, compiled: CompiledJourney | Instance, step_id: str, counter: str) -> None:
        journey = compiled.name if isinstance(compiled, CompiledJourney) else compiled.journey
        self.effects.append(
            Counted(journey=journey, version=compiled.version, step_id=step_id, counter=counter)
        )

    # ------------------------------------------------------------------ endings

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
        self.count(instance, "", counter)
        self.instances.pop(instance.id, None)

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
        self.count(instance, "", "converted")
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
            seen = {"event": name, "message_id": key, "properties": dict(scope.properties)}
            if timestamp is not None:
                seen["timestamp"] = timestamp.isoformat()
            instance = replace(instance, pending=None, matched={**instance.matched, step.id: seen})
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
        entry = journey.entry
        if not matches(journey.trigger.where, scope):
            return
        if (entry.start_at is not None and self.now < entry.start_at) or (
            entry.end_at is not None and self.now >= entry.end_at
        ):
            self._refuse(compiled, "outside_window")
            return
        history = self.history.get(journey.name)
        if history is not None:
            if entry.repeat == "once":
                self._refuse(compiled, "repeat_once")
                return
            if (
                isinstance(entry.repeat, RepeatAfter)
                and self.now - history.last_entered_at < entry.repeat.after
            ):
                self._refuse(compiled, "cooldown")
                return
        unique: str | None = None
        if entry.unique_by is not None:
            value = resolve(entry.unique_by, scope)
            if value is MISSING or value is None:
                self._refuse(compiled, "no_unique_value")
                return
            unique = unique_key(value)
        instance_id = make_id("in_", journey.name, self.profile_id, key)
        if instance_id in self.instances:
            return
        if any(
            i.journey == journey.name and i.unique_value == unique for i in self.instances.values()
        ):
            self._refuse(compiled, "already_active")
            return
        if len(self.instances) >= self.catalogue.limits.instances_per_profile:
            self._refuse(compiled, "instance_limit")
            return
        trigger = TriggerEvent(
            name=name,
            message_id=key,
            properties=dict(scope.properties),
            context=dict(scope.context),
            timestamp=timestamp,
        )
        instance = Instance(
            id=instance_id,
            journey=journey.name,
            version=compiled.version,
            unique_value=unique,
            started_at=self.now,
            trigger=trigger,
        )
        entries = history.entries + 1 if history is not None else 1
        self.history = {
            **self.history,
            journey.name: EntryHistory(last_entered_at=self.now, entries=entries),
        }
        self.effects.append(
            InstanceStarted(
                instance_id=instance_id,
                journey=journey.name,
                version=compiled.version,
                unique_value=unique,
                started_at=self.now,
                profile_id=self.profile_id,
                trigger_message_id=key,
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

    def _trigger_scope(self, instance: Instance) -> Scope:
        trigger = instance.trigger
        return Scope(trigger.properties, trigger.context, self.traits, trigger.name)

    def proceed(self, instance: Instance, compiled: CompiledJourney, step: Step | None) -> None:
        """Run steps from ``step`` until one waits or the journey's list ends (completion)."""
        while step is not None:
            visit = instance.visits.get(step.id, 0) + 1
            instance = replace(
                instance, position=step.id, visits={**instance.visits, step.id: visit}
            )
            self.count(compiled, step.id, "reached")
            following = compiled.next_step[step.id]
            if type(step) is SendStep:
                instance = self._send(instance, compiled, step, visit)
            elif type(step) is WaitStep:
                due = wait_until(step.wait, self._trigger_scope(instance), self.traits, self.now)
                if due is not None and due > self.now:
                    limit = self.now + self.catalogue.limits.max_wait
                    self._park(instance, step.id, visit, min(due, limit), "wait")
                    return
            elif type(step) is WaitForStep:
                self._park(instance, step.id, visit, self.now + step.wait_for.within, "wait_for")
                return
            elif type(step) is BranchStep:
                following = self._branch(instance, compiled, step, following)
            elif type(step) is SplitStep:
                instance, following = self._split(instance, compiled, step, following)
            step = following
        self.end(instance, "completed", "completed", "completed")

    def _park(
        self,
        instance: Instance,
        step_id: str,
        visit: int,
        due: datetime,
        kind: Literal["wait", "wait_for"],
    ) -> None:
        timer_id = make_id("tm_", instance.id, step_id, visit)
        self.effects.append(
            TimerSet(
                timer_id=timer_id, instance_id=instance.id, step_id=step_id, due_at=due, kind=kind
            )
        )
        pending = Pending(step_id=step_id, timer_id=timer_id, kind=kind, due_at=due)
        self.instances[instance.id] = replace(instance, pending=pending)

    def _send(
        self, instance: Instance, compiled: CompiledJourney, step: SendStep, visit: int
    ) -> Instance:
        send = step.send
        address: str | None = None
        if send.to is not None:
            address = _address(resolve(send.to, self._trigger_scope(instance)))
            if address is None:
                self.count(compiled, step.id, "skipped:no_address")
                return instance
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
        return replace(instance, sends={**instance.sends, step.id: delivery_id})

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
    ) -> tuple[Instance, Step | None]:
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
        instance = replace(instance, splits={**instance.splits, step.id: chosen})
        return instance, (path.steps[0] if path.steps else following)


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
