"""The published journeys an interpreter runs, compiled for fast lookups.

The matcher builds a :class:`Catalogue` from PostgreSQL: every published version a running
instance may still need, and per journey the *live* version new entries go to (a stopped journey
has none). ``catalogue.interested(event_name)`` tells the matcher whether an event can matter at
all, so irrelevant events cost nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cairn_common.messages import DeliveryResult, Event, ProfileInput
from cairn_common.rates import parse_rate
from cairn_journey.correlation import delivery_event_name, journey_event_name
from cairn_journey.model import (
    Awaited,
    BranchStep,
    ExitRule,
    Journey,
    SplitStep,
    Step,
    WaitForStep,
)
from cairn_journey.validate import Limits


class CompiledJourney:
    """One published version with its steps indexed by id."""

    __slots__ = (
        "anchors",
        "awaited_sends",
        "awaits",
        "events",
        "exits",
        "first",
        "journey",
        "name",
        "next_step",
        "rate_limit",
        "steps",
        "version",
        "wait_for_events",
        "winners",
    )

    def __init__(
        self, journey: Journey, version: int, winners: Mapping[str, int] | None = None
    ) -> None:
        self.journey = journey
        self.name = journey.name
        self.version = version
        self.steps: dict[str, Step] = {}
        self.next_step: dict[str, Step | None] = {}
        self.first: Step | None = journey.steps[0] if journey.steps else None
        self._index(journey.steps)
        self.exits: dict[str, tuple[ExitRule, ...]] = {}
        for rule in journey.exit:
            self.exits[rule.event] = (*self.exits.get(rule.event, ()), rule)
        waits = [s for s in self.steps.values() if isinstance(s, WaitForStep)]
        self.awaits: dict[str, tuple[Awaited, ...]] = {s.id: s.wait_for.awaited() for s in waits}
        """Per ``wait_for`` step: the events it waits for, each with its steps."""
        self.anchors: dict[str, str | None] = {}
        """Per ``wait_for`` step: the send its window counts from (the one send its paths'
        ``of`` name, if exactly one), else ``None``."""
        for s in waits:
            ofs = {a.of for a in self.awaits[s.id] if a.of is not None}
            self.anchors[s.id] = ofs.pop() if len(ofs) == 1 else None
        self.wait_for_events = frozenset(
            a.event for s in waits for a in (*self.awaits[s.id], *s.wait_for.reset_on)
        )
        self.awaited_sends = frozenset(
            a.of for s in waits for a in self.awaits[s.id] if a.of is not None
        )
        """Send steps a ``wait_for … of:`` refers to (their correlated events are kept)."""
        events = {journey.trigger.event, *self.exits, *self.wait_for_events}
        if journey.goal is not None:
            events.add(journey.goal.event)
        self.events = frozenset(events)
        self.rate_limit = parse_rate(journey.rate_limit) if journey.rate_limit else None
        self.winners: dict[str, int] = {
            step_id: path
            for step_id, path in (winners or {}).items()
            if isinstance(step := self.steps.get(step_id), SplitStep)
            and 0 <= path < len(step.split)
        }
        """Per split step with a decided winner: the path every later entry takes."""

    def path_name(self, step_id: str, index: int) -> str:
        """How a split's path is named in counters (:meth:`SplitStep.path_name`)."""
        step = self.steps[step_id]
        assert isinstance(step, SplitStep)
        return step.path_name(index)

    def _index(self, steps: tuple[Step, ...], after: Step | None = None) -> None:
        """Index ``steps``; the step after the last one is ``after`` (the step that follows the
        list's owner), so a nested list rejoins its parent and only running off the end of the
        journey's own list completes an instance."""
        for i, step in enumerate(steps):
            following = steps[i + 1] if i + 1 < len(steps) else after
            self.steps[step.id] = step
            self.next_step[step.id] = following
            if isinstance(step, WaitForStep):
                for _, nested in step.wait_for.paths():
                    self._index(nested, following)
            elif isinstance(step, BranchStep):
                for case in step.branch.cases:
                    self._index(case.steps, following)
                self._index(step.branch.otherwise, following)
            elif isinstance(step, SplitStep):
                for path in step.split:
                    self._index(path.steps, following)


class Catalogue:
    """Published journeys: ``versions`` (every version a running instance may need) and ``live``
    (journey name -> the compiled version new entries go to)."""

    def __init__(
        self,
        versions: Mapping[tuple[str, int], Journey] | None = None,
        live: Mapping[str, int] | None = None,
        *,
        limits: Limits | None = None,
        winners: Mapping[tuple[str, int], Mapping[str, int]] | None = None,
    ) -> None:
        """``winners``: per version, the split steps whose winner was decided (step id ->
        path index)."""
        self.limits = limits or Limits()
        self.versions: dict[tuple[str, int], Journey] = dict(versions or {})
        decided = winners or {}
        self.compiled: dict[tuple[str, int], CompiledJourney] = {
            key: CompiledJourney(journey, key[1], decided.get(key))
            for key, journey in self.versions.items()
        }
        self.live: dict[str, CompiledJourney] = {}
        for name, version in (live or {}).items():
            compiled = self.compiled.get((name, version))
            if compiled is None:
                raise ValueError(f"live version {name} v{version} is not among the versions")
            self.live[name] = compiled
        self.by_trigger: dict[str, tuple[CompiledJourney, ...]] = {}
        for compiled in sorted(self.live.values(), key=lambda c: c.name):
            event = compiled.journey.trigger.event
            self.by_trigger[event] = (*self.by_trigger.get(event, ()), compiled)
        self._events = frozenset(self.by_trigger).union(
            *(c.events - {c.journey.trigger.event} for c in self.compiled.values())
        )

    @classmethod
    def from_documents(
        cls,
        versions: Iterable[tuple[str, int, Mapping[str, Any]]],
        live: Mapping[str, int],
        *,
        limits: Limits | None = None,
    ) -> Catalogue:
        """Build from stored definitions (``(name, version, document)`` rows)."""
        from cairn_journey.documents import parse_document

        parsed: dict[tuple[str, int], Journey] = {}
        for name, version, data in versions:
            doc = parse_document(data, source=f"{name} v{version}")
            if not isinstance(doc, Journey):
                raise ValueError(f"{name} v{version} is a {doc.kind}, not a Journey")
            parsed[(name, version)] = doc
        return cls(parsed, live, limits=limits)

    def get(self, name: str, version: int) -> CompiledJourney | None:
        return self.compiled.get((name, version))

    def interested(self, event_name: str | None) -> bool:
        """Whether any journey could react to an event of this name (trigger of a live journey;
        exit, goal or wait_for of any version)."""
        return event_name is not None and event_name in self._events

    def interested_in(self, inp: ProfileInput) -> bool:
        """Whether the interpreter must see this input at all (identify calls always matter when
        any journey is published: traits feed conditions and addresses)."""
        if isinstance(inp, Event):
            if inp.type == "identify":
                return bool(self.compiled)
            return self.interested(journey_event_name(inp))
        if isinstance(inp, DeliveryResult):
            # Every final outcome moves the instance that waits on its send; a deferral only
            # matters to a journey that awaits the event it names (none: it has no name).
            if inp.outcome == "deferred":
                return self.interested(delivery_event_name(inp))
            return bool(self.compiled)
        return True
