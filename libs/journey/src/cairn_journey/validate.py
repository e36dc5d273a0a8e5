"""Publish-time checks: what a journey needs from the rest of the world to go live.

Structure (step ids, durations, ``of:`` naming an earlier send, ...) is checked when a document
is read (:mod:`cairn_journey.documents`); this module checks what depends on other documents and
on limits: templates exist, are ``ready`` and fit the channel; channels and destinations resolve;
event and property references agree with ``Trigger`` documents; sizes and durations are within
:class:`Limits`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

import msgspec

from cairn_journey.conditions import Condition, ConditionNode, property_paths
from cairn_journey.durations import format_duration
from cairn_journey.model import (
    BranchStep,
    Channel,
    Destination,
    Journey,
    RepeatAfter,
    SendStep,
    SplitStep,
    Step,
    Template,
    Trigger,
    WaitForStep,
    WaitStep,
)
from cairn_journey.problems import Problem
from cairn_journey.triggers import type_matches

ADDRESSED_CHANNELS = frozenset({"email", "sms", "push"})


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Limits from ARCHITECTURE §2 (defaults); reject above them with a clear error."""

    event_bytes: int = 32 * 1024
    batch_bytes: int = 500 * 1024
    batch_events: int = 2500
    steps_per_journey: int = 50
    max_wait: timedelta = timedelta(days=365)
    instance_lifetime: timedelta = timedelta(days=365)
    instances_per_profile: int = 25
    send_outcome_bound: timedelta = timedelta(days=1)
    """How long an instance waits for a send's outcome before moving on as ``unknown``."""


def walk_steps(steps: tuple[Step, ...], path: str = "steps") -> Iterator[tuple[str, Step]]:
    """Every step of a journey, depth first, with its path (``steps[1].wait_for.timed_out[0]``)."""
    for i, step in enumerate(steps):
        here = f"{path}[{i}]"
        yield here, step
        if isinstance(step, WaitForStep):
            for key, nested in step.wait_for.paths():
                yield from walk_steps(nested, f"{here}.wait_for.{key}")
        elif isinstance(step, BranchStep):
            for c, case in enumerate(step.branch.cases):
                yield from walk_steps(case.steps, f"{here}.branch.cases[{c}].steps")
            yield from walk_steps(step.branch.otherwise, f"{here}.branch.otherwise")
        elif isinstance(step, SplitStep):
            for p, split_path in enumerate(step.split):
                yield from walk_steps(split_path.steps, f"{here}.split[{p}].steps")


def check_publishable(
    journey: Journey,
    *,
    templates: Mapping[str, Template],
    triggers: Mapping[str, Trigger],
    channels: Mapping[str, Channel],
    destinations: Mapping[str, Destination],
    ready_templates: set[str],
    limits: Limits,
    source: str = "",
) -> list[Problem]:
    """Every problem that stops ``journey`` from being published (empty = publishable)."""
    check = _Check(source, {t.event: t for t in triggers.values()})
    steps = list(walk_steps(journey.steps))
    if len(steps) > limits.steps_per_journey:
        check.add("steps", f"{len(steps)} steps; the limit is {limits.steps_per_journey}")
    check.events(journey)
    for path, step in steps:
        if isinstance(step, SendStep):
            check.send(path, step, templates, channels, destinations, ready_templates)
            check.duration(f"{path}.send.outcome_within", step.send.outcome_within, limits.max_wait)
        elif isinstance(step, WaitStep):
            wait = step.wait
            check.duration(f"{path}.wait", wait.duration, limits.max_wait)
            check.duration(f"{path}.wait.offset", wait.offset, limits.max_wait)
        elif isinstance(step, WaitForStep):
            check.duration(f"{path}.wait_for.within", step.wait_for.within, limits.max_wait)
    repeat = journey.entry.repeat
    if isinstance(repeat, RepeatAfter):
        check.duration("entry.repeat.after", repeat.after, limits.instance_lifetime)
    return check.problems


class _Check:
    def __init__(self, source: str, triggers: dict[str, Trigger]) -> None:
        self.source = source
        self.triggers = triggers
        self.problems: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(path=path, message=message, source=self.source))

    def duration(self, path: str, value: timedelta | None, limit: timedelta) -> None:
        if value is not None and abs(value) > limit:
            self.add(
                path, f"{format_duration(value)} is longer than the limit {format_duration(limit)}"
            )

    # ------------------------------------------------------------------ sends

    def send(
        self,
        path: str,
        step: SendStep,
        templates: Mapping[str, Template],
        channels: Mapping[str, Channel],
        destinations: Mapping[str, Destination],
        ready: set[str],
    ) -> None:
        send = step.send
        wanted: str | None = None
        if send.channel is not None:
            channel = channels.get(send.channel)
            if channel is None:
                self.add(
                    f"{path}.send.channel",
                    f'no channel "{send.channel}" (apply a Channel document with that name)',
                )
            else:
                wanted = channel.type
                if channel.type in ADDRESSED_CHANNELS and send.to is None:
                    self.add(
                        f"{path}.send.to",
                        f"a {channel.type} send needs to: (where the "
                        "address comes from, e.g. profile.email)",
                    )
        if send.destination is not None:
            if send.destination not in destinations:
                self.add(
                    f"{path}.send.destination",
                    f'no destination "{send.destination}" '
                    "(apply a Destination document with that name)",
                )
            wanted = "webhook"
        if send.template is None:
            return
        template = templates.get(send.template)
        if template is None:
            self.add(f"{path}.send.template", f'no template "{send.template}"')
            return
        if send.template not in ready:
            self.add(
                f"{path}.send.template",
                f'template "{send.template}" is a draft; mark it ready before publishing',
            )
        if wanted is not None and template.channel != wanted:
            self.add(
                f"{path}.send.template",
                f'template "{send.template}" is for {template.channel}, not {wanted}',
            )
        for problem in _template_problems(template):
            self.add(f"{path}.send.template", f'template "{send.template}": {problem}')

    # ------------------------------------------------------------------ triggers

    def events(self, journey: Journey) -> None:
        trigger = journey.trigger
        self.references("trigger", trigger.event, trigger.where)
        unique_by = journey.entry.unique_by
        if unique_by is not None:
            self.property("entry.unique_by", trigger.event, unique_by, None)
        for i, rule in enumerate(journey.exit):
            self.references(f"exit[{i}]", rule.event, rule.where)
            if rule.match is not None:
                self.property(f"exit[{i}].match", rule.event, rule.match, None)
        if journey.goal is not None:
            goal = journey.goal
            self.references("goal", goal.event, goal.where)
            if goal.match is not None:
                self.property("goal.match", goal.event, goal.match, None)
        for path, step in walk_steps(journey.steps):
            if isinstance(step, WaitForStep):
                spec = step.wait_for
                rules = [
                    (f"{path}.wait_for" if not spec.events else f"{path}.wait_for.events[{i}]", a)
                    for i, a in enumerate(spec.awaited())
                ]
                rules += [
                    (f"{path}.wait_for.reset_on[{i}]", r) for i, r in enumerate(spec.reset_on)
                ]
                for here, awaited in rules:
                    self.references(here, awaited.event, awaited.where)
                    if awaited.match is not None:
                        self.property(f"{here}.match", awaited.event, awaited.match, None)
            elif isinstance(step, BranchStep):
                for c, case in enumerate(step.branch.cases):
                    self.conditions(f"{path}.branch.cases[{c}].when", trigger.event, case.when)
            elif isinstance(step, SendStep) and step.send.to is not None:
                self.property(f"{path}.send.to", trigger.event, step.send.to, None)
            elif isinstance(step, WaitStep) and step.wait.until is not None:
                self.property(f"{path}.wait.until", trigger.event, step.wait.until, None)

    def references(self, path: str, event: str, where: tuple[ConditionNode, ...]) -> None:
        self.conditions(f"{path}.where", event, where)

    def conditions(self, path: str, event: str, where: tuple[ConditionNode, ...]) -> None:
        for i, node in enumerate(where):
            for cond in _leaves(node):
                self.property(f"{path}[{i}].property", event, cond.property, cond)

    def property(self, path: str, event: str, prop: str, cond: Condition | None) -> None:
        """A property path checked against the event's Trigger document, when there is one."""
        trigger = self.triggers.get(event)
        name = _event_property(prop)
        if trigger is None or name is None:
            return
        spec = trigger.properties.get(name)
        if spec is None:
            declared = ", ".join(sorted(trigger.properties)) or "none"
            self.add(
                path,
                f'"{name}" is not a property of "{event}" (trigger '
                f'"{trigger.name}" declares: {declared})',
            )
            return
        if cond is None or "." in prop.removeprefix("event.properties.") or cond.value is None:
            return
        values = (
            cond.value
            if cond.op in ("in", "not_in") and isinstance(cond.value, list)
            else ([cond.value])
        )
        if cond.op in ("contains",) and spec.type == "array":
            return
        bad = [v for v in values if not _compatible(spec.type, v)]
        if bad:
            self.add(
                path,
                f'"{name}" is {_article(spec.type)} {spec.type}; {cond.op} '
                f"{bad[0]!r} can never hold",
            )


def _leaves(node: ConditionNode) -> list[Condition]:
    out: list[Condition] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, Condition):
            out.append(item)
        else:
            stack.extend(reversed(item.all if hasattr(item, "all") else item.any))
    return out


def _event_property(path: str) -> str | None:
    """The top-level event property a path reads, or ``None`` (profile, context, name)."""
    if path.startswith(("profile.", "event.context.")) or path == "event.name":
        return None
    return path.removeprefix("event.properties.").split(".", 1)[0]


def _compatible(kind: str, value: Any) -> bool:
    if kind == "datetime":
        return isinstance(value, str)
    if kind == "integer":
        return type_matches("number", value)
    return type_matches(kind, value)  # type: ignore[arg-type]


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _template_problems(template: Template) -> list[str]:
    try:
        from cairn_journey.documents import to_document
        from cairn_journey.render import template_problems
    except ImportError:  # pragma: no cover - rendering ships with the dispatcher work
        return []
    return list(template_problems(to_document(template)))


__all__ = ["Limits", "check_publishable", "property_paths", "walk_steps"]
