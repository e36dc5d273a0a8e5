"""Running a journey's steps for one instance: sends, waits, branches, splits, endings.

The base of :class:`cairn_journey.run.ProfileRun`; it holds the working copy of one profile's
state while one input is applied.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Literal

from msgspec.structs import replace

from cairn_common.messages import DeliveryRequested
from cairn_journey.catalogue import Catalogue, CompiledJourney
from cairn_journey.conditions import MISSING, Scope, matches, resolve
from cairn_journey.correlation import ALL_DELIVERY_EVENTS, DELIVERY_ID_PROPERTY
from cairn_journey.durations import format_duration
from cairn_journey.effects import (
    Counted,
    Effect,
    InstanceEnded,
    SendRequested,
    TimerCancelled,
    TimerSet,
    TraitsUpdated,
)
from cairn_journey.model import (
    Awaited,
    BranchStep,
    SendStep,
    SplitStep,
    Step,
    UpdateStep,
    WaitFor,
    WaitForStep,
    WaitStep,
)
from cairn_journey.state import Heard, Instance, Pending, ProfileState, SendOutcome
from cairn_journey.timing import wait_until

_SEP = "\x1f"
HOLDOUT = "holdout:"
"""Prefix of every counter a holdout instance counts (``holdout:entered``, ...)."""
HEARD_KEPT = 8
"""How many early events (see :class:`cairn_journey.state.Heard`) an instance keeps."""


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


def holdout_point(profile_id: str, journey: str) -> float:
    """Where a profile falls in ``[0, 100)`` for a journey's holdout: the same every time it
    enters, so a profile is in the control group of a journey or never."""
    return split_point(profile_id, f"holdout{_SEP}{journey}")


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
        self.user_id = state.user_id
        self.anonymous_id = state.anonymous_id
        self.ids = self._ids()
        self.instances: dict[str, Instance] = {i.id: i for i in state.instances}
        self.history = state.history
        self.seen = state.seen
        self.effects: list[Effect] = []
        self.accepted = now
        """When Cairn accepted the input being applied (ingest's ``received_at``, a result's
        ``at``): a window is judged by it, not by when a backlog let the input be applied."""

    def _ids(self) -> dict[str, str]:
        ids = {"id": self.profile_id}
        if self.user_id:
            ids["user_id"] = self.user_id
        if self.anonymous_id:
            ids["anonymous_id"] = self.anonymous_id
        return ids

    def note_ids(self, user_id: str | None, anonymous_id: str | None) -> None:
        """The ids an event of the profile carried (the latest of each is kept)."""
        self.user_id = user_id or self.user_id
        self.anonymous_id = anonymous_id or self.anonymous_id
        self.ids = self._ids()

    def scope(
        self, properties: Mapping[str, Any], context: Mapping[str, Any], event: str | None
    ) -> Scope:
        """What a condition on the event being applied reads."""
        return Scope(properties, context, self.traits, event, self.ids)

    def finish(self) -> tuple[ProfileState, list[Effect]]:
        state = ProfileState(
            profile_id=self.profile_id,
            user_id=self.user_id,
            anonymous_id=self.anonymous_id,
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

    def count(
        self,
        compiled: CompiledJourney,
        step_id: str,
        counter: str,
        instance: Instance | None = None,
    ) -> None:
        """An analytics increment; what a holdout ``instance`` does is counted apart."""
        if instance is not None and instance.holdout:
            counter = HOLDOUT + counter
        self.effects.append(
            Counted(
                journey=compiled.name, version=compiled.version, step_id=step_id, counter=counter
            )
        )

    def count_instance(self, instance: Instance, counter: str) -> None:
        """A journey-level counter for a running instance's journey version."""
        if instance.holdout:
            counter = HOLDOUT + counter
        self.effects.append(
            Counted(journey=instance.journey, version=instance.version, step_id="", counter=counter)
        )

    def count_paths(
        self,
        instance: Instance,
        compiled: CompiledJourney | None,
        counter: str,
        splits: Mapping[str, int] | None = None,
    ) -> None:
        """Count ``counter`` for each split path the instance took (``converted:<path>``, ...):
        an experiment's figures per path. ``splits``: when newer than ``instance.splits``."""
        if compiled is None:
            return
        for step_id, index in (instance.splits if splits is None else splits).items():
            if step_id in compiled.steps:
                name = compiled.path_name(step_id, index)
                self.count(compiled, step_id, f"{counter}:{name}", instance)

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
        steps = {k: {"event": v} for k, v in instance.matched.items()} if instance.matched else {}
        return Scope(
            trigger.properties, trigger.context, self.traits, trigger.name, self.ids, steps
        )

    def correlates(self, match: str | None, instance: Instance, scope: Scope) -> bool:
        if match is None:
            return True
        value = resolve(match, scope)
        return (
            value is not MISSING
            and value is not None
            and (unique_key(value) == instance.unique_value)
        )

    def proceed(
        self,
        instance: Instance,
        compiled: CompiledJourney,
        step: Step | None,
        since: datetime | None = None,
    ) -> None:
        """Run steps from ``step`` until one waits or the journey's list ends (completion).

        ``since`` is when the previous step really finished (a send: when its message was sent);
        a wait or ``wait_for`` reached on the way counts from then, not from when this input
        was applied. A send parks the instance until its outcome is known (``on_outcome``).

        The instance's bookkeeping (visits, sends, splits, ...) is collected in locals and
        written once, when the instance parks at a wait or ends: one new struct per input, not
        per step.
        """
        start = since if since is not None and since < self.now else self.now
        visits = dict(instance.visits)
        sends = instance.sends
        splits = instance.splits
        outcomes = instance.outcomes
        matched = instance.matched
        heard = instance.heard
        while step is not None:
            step_id = step.id
            visit = visits.get(step_id, 0) + 1
            visits[step_id] = visit
            self.count(compiled, step_id, "reached", instance)
            following = compiled.next_step[step_id]
            due: datetime | None = None
            kind: Literal["wait", "wait_for", "send"] = "wait"
            if type(step) is SendStep:
                if step_id in outcomes:  # an earlier visit's outcome is not this one's
                    outcomes = {k: v for k, v in outcomes.items() if k != step_id}
                if instance.holdout:  # the control group: nothing is sent, the walk goes on
                    self.count(compiled, step_id, "withheld", instance)
                    outcomes = {**outcomes, step_id: SendOutcome("withheld", self.now, "holdout")}
                    sends = {k: v for k, v in sends.items() if k != step_id}
                    step = following
                    continue
                delivery_id = self._send(instance, compiled, step, visit, splits)
                if delivery_id is None:
                    outcomes = {**outcomes, step_id: SendOutcome("skipped", self.now, "no address")}
                    sends = {k: v for k, v in sends.items() if k != step_id}
                else:
                    sends = {**sends, step_id: delivery_id}
                    due, kind = self.now + self.outcome_bound(step), "send"
            elif type(step) is WaitStep:
                due = wait_until(step.wait, self._trigger_scope(instance), self.traits, start)
                if due is not None and due <= self.now:
                    due = None  # already past: carry on at once
            elif type(step) is WaitForStep:
                spec = step.wait_for
                opened = start
                anchor = compiled.anchors[step_id]
                outcome = outcomes.get(anchor) if anchor is not None else None
                awaits = compiled.awaits[step_id]
                if not any(can_come(a, outcomes, sends) for a in awaits):
                    following = self.not_sent(compiled, step, outcome, instance)
                else:
                    if outcome is not None and not outcome.not_sent:
                        opened = min(outcome.at, self.now)
                    early = self._heard_match(instance, heard, awaits, sends, opened, spec)
                    if early is not None:
                        heard_event, index = early
                        record = with_path(heard_event.record, spec, index)
                        matched = {**matched, step_id: record}
                        heard = tuple(h for h in heard if h is not heard_event)
                        following = self.path_taken(compiled, step, index, instance)
                        start = heard_event.at
                    else:
                        # Even a window that is already over parks (its timer due at once): an
                        # awaited event accepted inside it may still be queued behind this
                        # input, and it must be applied before the window is called timed out.
                        due, kind = opened + spec.within, "wait_for"
            elif type(step) is BranchStep:
                following = self._branch(instance, compiled, step, following)
            elif type(step) is SplitStep:
                chosen, following = self._split(instance, compiled, step, following)
                splits = {**splits, step_id: chosen}
            elif type(step) is UpdateStep:
                self._update(replace(instance, matched=matched), compiled, step)
            if due is not None:
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
                if kind != "send":  # only events naming an awaited send can still matter
                    awaited = {sends[s] for s in compiled.awaited_sends if s in sends}
                    heard = tuple(h for h in heard if _delivery_of(h.record) in awaited)
                self.instances[instance.id] = replace(
                    instance,
                    position=step_id,
                    visits=visits,
                    sends=sends,
                    splits=splits,
                    outcomes=outcomes,
                    matched=matched,
                    heard=heard,
                    pending=Pending(step_id=step_id, timer_id=timer_id, kind=kind, due_at=due),
                )
                return
            step = following
        self.end(instance, "completed", "completed", "completed")

    def path_taken(
        self, compiled: CompiledJourney, step: WaitForStep, index: int, instance: Instance
    ) -> Step | None:
        """Count the path an awaited event chose; the step to go on with."""
        self.count(compiled, step.id, "matched", instance)
        awaited = compiled.awaits[step.id][index]
        if step.wait_for.events:
            self.count(compiled, step.id, f"matched:{awaited.name or index}", instance)
        return awaited.steps[0] if awaited.steps else compiled.next_step[step.id]

    def timed_out(
        self, compiled: CompiledJourney, step: WaitForStep, instance: Instance
    ) -> Step | None:
        """Count a ``wait_for`` whose window ended; the step to go on with."""
        self.count(compiled, step.id, "timed_out", instance)
        path = step.wait_for.timed_out
        return path[0] if path else compiled.next_step[step.id]

    def park_wait_for(
        self, instance: Instance, step: WaitForStep, timer_id: str, due: datetime
    ) -> None:
        """Wait (again) at ``step`` until ``due`` with a new timer (a reset, a re-timing)."""
        due = min(due, self.now + self.catalogue.limits.max_wait)
        self.effects.append(
            TimerSet(
                timer_id=timer_id,
                instance_id=instance.id,
                step_id=step.id,
                due_at=due,
                kind="wait_for",
            )
        )
        self.instances[instance.id] = replace(
            instance,
            pending=Pending(step_id=step.id, timer_id=timer_id, kind="wait_for", due_at=due),
        )

    def outcome_bound(self, step: SendStep) -> timedelta:
        """How long an instance waits at ``step`` for its message's outcome."""
        return step.send.outcome_within or self.catalogue.limits.send_outcome_bound

    def not_sent(
        self,
        compiled: CompiledJourney,
        step: WaitForStep,
        outcome: SendOutcome | None,
        instance: Instance,
    ) -> Step | None:
        """Count a ``wait_for … of:`` whose message was not sent; the step to go on with."""
        reason = outcome.outcome if outcome is not None else "not_requested"
        self.count(compiled, step.id, "not_sent", instance)
        self.count(compiled, step.id, f"not_sent:{reason}", instance)
        spec = step.wait_for
        path = spec.not_sent or spec.timed_out
        return path[0] if path else compiled.next_step[step.id]

    def _heard_match(
        self,
        instance: Instance,
        heard: tuple[Heard, ...],
        awaits: tuple[Awaited, ...],
        sends: dict[str, str],
        opened: datetime,
        spec: WaitFor,
    ) -> tuple[Heard, int] | None:
        """The first early event that one of the paths takes inside the window (with the
        path's index), or ``None``."""
        for h in heard:
            if h.at >= opened + spec.within:
                continue  # after its window
            record = h.record
            name = record.get("event")
            properties = record.get("properties") or {}
            scope = self.scope(properties, _EMPTY, name)
            for index, awaited in enumerate(awaits):
                if awaited.event != name or (awaited.of is None and h.at < opened):
                    continue  # an event that is not about a send counts from the window's start
                if self.takes(awaited, instance, scope, sends):
                    return h, index
        return None

    def takes(
        self,
        awaited: Awaited,
        instance: Instance,
        scope: Scope,
        sends: dict[str, str] | None = None,
    ) -> bool:
        """Whether the event in ``scope`` is the one ``awaited`` waits for (name aside);
        ``sends``: the instance's requested deliveries, when newer than ``instance.sends``."""
        if not matches(awaited.where, scope):
            return False
        if awaited.of is not None:
            sent = (instance.sends if sends is None else sends).get(awaited.of)
            return sent is not None and resolve(DELIVERY_ID_PROPERTY, scope) == sent
        return self.correlates(awaited.match, instance, scope)

    def hear(self, instance: Instance, record: dict[str, Any]) -> None:
        """Keep an early event for a later ``wait_for`` (bounded, oldest dropped)."""
        heard = (*instance.heard[-(HEARD_KEPT - 1) :], Heard(record=record, at=self.accepted))
        self.instances[instance.id] = replace(instance, heard=heard)

    def outcome_unknown(
        self, instance: Instance, compiled: CompiledJourney, step: SendStep
    ) -> None:
        """A send's bound passed with no result: move on as ``unknown``."""
        bound = format_duration(self.outcome_bound(step))
        outcome = SendOutcome("unknown", self.now, f"no outcome within {bound}")
        self.count(compiled, step.id, "unknown", instance)
        instance = replace(instance, pending=None, outcomes={**instance.outcomes, step.id: outcome})
        self.proceed(instance, compiled, compiled.next_step[step.id])

    def _send(
        self,
        instance: Instance,
        compiled: CompiledJourney,
        step: SendStep,
        visit: int,
        splits: dict[str, int],
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
            profile={**self.traits, **self.ids},
            event=event,
            matched_events=instance.matched,
            unique_value=instance.unique_value,
            rate_limit=compiled.rate_limit,
        )
        self.effects.append(SendRequested(delivery=request))
        self.count(compiled, step.id, "send_requested")
        self.count_paths(instance, compiled, "sends", splits)
        return delivery_id

    def _update(self, instance: Instance, compiled: CompiledJourney, step: UpdateStep) -> None:
        """Change the traits now: later steps, and every journey's next input, read them (not
        for a holdout instance: the control group is left as it is)."""
        if instance.holdout:
            self.count(compiled, step.id, "withheld", instance)
            return
        spec = step.update
        scope = self._trigger_scope(instance)
        changed: dict[str, Any] = {}
        for name, value in spec.set.items():
            if isinstance(value, dict) and set(value) == {"from"}:
                value = resolve(value["from"], scope)
                if value is MISSING:
                    self.count(compiled, step.id, f"update:missing:{name}")
                    continue
            changed[name] = value
        for name, by in spec.increment.items():
            current = self.traits.get(name)
            if isinstance(current, bool) or not isinstance(current, int | float):
                current = 0  # not a number (or absent): counting starts here
            changed[name] = current + by
        traits = {**self.traits, **changed}
        for name in spec.unset:
            traits.pop(name, None)
        self.traits = traits
        self.effects.append(TraitsUpdated(set=changed, unset=spec.unset))
        self.count(compiled, step.id, "updated")

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
                self.count(compiled, step.id, f"branch:{case.name or index}", instance)
                return case.steps[0] if case.steps else following
        self.count(compiled, step.id, "branch:otherwise", instance)
        otherwise = step.branch.otherwise
        return otherwise[0] if otherwise else following

    def _split(
        self,
        instance: Instance,
        compiled: CompiledJourney,
        step: SplitStep,
        following: Step | None,
    ) -> tuple[int, Step | None]:
        """Choose the instance's path: the one a ``sticky`` split sent this profile down
        before, else the decided winner, else by ``percent`` (a hash of the instance)."""
        history = self.history.get(compiled.name)
        first = history.paths.get(step.id) if step.sticky and history is not None else None
        if first is not None and first < len(step.split):
            chosen = first
        elif step.id in compiled.winners:
            chosen = compiled.winners[step.id]
            self.count(compiled, step.id, f"winner:{compiled.path_name(step.id, chosen)}", instance)
        else:
            chosen = self._by_percent(instance, step)
        if step.sticky and history is not None and first is None:
            paths = {**history.paths, step.id: chosen}
            self.history = {**self.history, compiled.name: replace(history, paths=paths)}
        self.count(compiled, step.id, f"split:{compiled.path_name(step.id, chosen)}", instance)
        path = step.split[chosen]
        return chosen, (path.steps[0] if path.steps else following)

    @staticmethod
    def _by_percent(instance: Instance, step: SplitStep) -> int:
        point = split_point(instance.id, step.id)
        total = 0.0
        for index, path in enumerate(step.split):
            total += path.percent
            if point < total:
                return index
        return len(step.split) - 1


_EMPTY: dict[str, Any] = {}


def can_come(awaited: Awaited, outcomes: dict[str, SendOutcome], sends: dict[str, str]) -> bool:
    """Whether the event a path waits for can still arrive. With ``of``: not when no message was
    requested, nor (for an event about the recipient, such as an open) when it was not sent; an
    awaited delivery event (``Email Bounced``) is itself the outcome, so only a missing request
    rules it out."""
    if awaited.of is None:
        return True
    if awaited.event in ALL_DELIVERY_EVENTS:
        return awaited.of in sends
    outcome = outcomes.get(awaited.of)
    return outcome is not None and not outcome.not_sent


def with_path(record: dict[str, Any], spec: WaitFor, index: int) -> dict[str, Any]:
    """The matched event's record, naming the path it took in the hold-until form."""
    if not spec.events:
        return record
    return {**record, "path": spec.events[index].name or index}


def _delivery_of(record: dict[str, Any]) -> Any:
    properties = record.get("properties")
    return properties.get(DELIVERY_ID_PROPERTY) if isinstance(properties, dict) else None


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
