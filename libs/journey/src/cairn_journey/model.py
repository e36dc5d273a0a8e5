"""The documents Cairn reads: journeys, templates, triggers, channels and destinations.

Every document is a frozen ``msgspec.Struct`` whose shape mirrors its YAML form, so
``msgspec.to_builtins(document)`` gives back a document that parses to the same struct. The
structs are built by :mod:`cairn_journey.documents`, which reports every problem of a document
with its path and line; never construct them from untrusted input by hand.

Durations are :class:`datetime.timedelta` (written ``30s``, ``10m``, ``2h``, ``1d``, ``1w`` or
ISO-8601 ``P1DT2H``); instants are timezone-aware :class:`datetime.datetime` in UTC.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

import msgspec

from cairn_journey.conditions import ConditionNode

ChannelType = Literal["email", "sms", "push", "webhook"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CHANNEL_TYPES: tuple[ChannelType, ...] = ("email", "sms", "push", "webhook")


class Doc(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base of every struct in a document."""


# --------------------------------------------------------------------------- journey


class RepeatAfter(Doc, frozen=True):
    """``repeat: {after: 7d}``: enter again only once this long has passed since the last entry."""

    after: timedelta


Repeat = Literal["always", "once"] | RepeatAfter


class TriggerSpec(Doc, frozen=True):
    """What starts a journey: an event name, plus conditions on the event and the profile."""

    event: str
    where: tuple[ConditionNode, ...] = ()


class Entry(Doc, frozen=True):
    repeat: Repeat = "always"
    unique_by: str | None = None
    """A property path of the triggering event (bare name = ``event.properties.<name>``)."""
    start_at: datetime | None = None
    end_at: datetime | None = None


class ExitRule(Doc, frozen=True):
    """End instances when ``event`` happens; with ``match`` only the instance whose unique value
    equals that property of the exit event."""

    event: str
    match: str | None = None
    where: tuple[ConditionNode, ...] = ()


class Goal(Doc, frozen=True):
    """Marks an instance converted (once) when ``event`` happens; does not exit it."""

    event: str
    match: str | None = None
    where: tuple[ConditionNode, ...] = ()
    target: float | None = None
    """Target conversion share in percent (``target: 50%`` is 50.0)."""


class Send(Doc, frozen=True):
    """Send a message on a channel, or to a destination (exactly one of the two)."""

    channel: str | None = None
    destination: str | None = None
    template: str | None = None
    to: str | None = None
    """Where the address comes from: ``profile.email``, ``event.properties.phone``, ..."""
    outcome_within: timedelta | None = None
    """How long the instance waits for this message's outcome before it moves on as ``unknown``
    (default: the matcher's ``send_outcome_bound``, 1 day)."""


class Wait(Doc, frozen=True):
    """Exactly one of: a ``duration``; ``until_time`` (``HH:MM`` in the profile's ``timezone``
    trait, UTC by default); or ``until`` (a property holding a date or instant) plus ``offset``."""

    duration: timedelta | None = None
    until_time: str | None = None
    on: tuple[Weekday, ...] = ()
    """With ``until_time``: only on these days (``[mon, tue, wed, thu, fri]``); any day if empty."""
    until: str | None = None
    offset: timedelta | None = None


class SendStep(Doc, frozen=True):
    id: str
    send: Send


class WaitStep(Doc, frozen=True):
    id: str
    wait: Wait


class Awaited(Doc, frozen=True):
    """One event a ``wait_for`` waits for: a path of a hold-until (``events:``), or a rule of
    ``reset_on``. ``of`` / ``match`` / ``where`` as in the single form."""

    event: str
    of: str | None = None
    match: str | None = None
    where: tuple[ConditionNode, ...] = ()
    steps: tuple[Step, ...] = ()
    name: str | None = None


class WaitFor(Doc, frozen=True):
    """Wait up to ``within`` for ``event``; optionally correlated with ``of`` (the delivery of an
    earlier send step) or ``match`` (a property equal to the instance's unique value).

    With ``of``, ``within`` counts from the moment that message was sent, and a message that was
    not sent at all (skipped, suppressed, failed, ...) takes ``not_sent`` (or, without it,
    ``timed_out``) at once.

    The hold-until form lists several ``events`` instead, each with its own correlation and
    steps: the first to arrive wins. An event matching a ``reset_on`` rule restarts the wait.
    """

    within: timedelta
    event: str | None = None
    of: str | None = None
    match: str | None = None
    where: tuple[ConditionNode, ...] = ()
    matched: tuple[Step, ...] = ()
    events: tuple[Awaited, ...] = ()
    reset_on: tuple[Awaited, ...] = ()
    timed_out: tuple[Step, ...] = ()
    not_sent: tuple[Step, ...] = ()

    def awaited(self) -> tuple[Awaited, ...]:
        """The events it waits for, each with its steps (the single form is one path)."""
        if self.events:
            return self.events
        assert self.event is not None
        return (
            Awaited(
                event=self.event,
                of=self.of,
                match=self.match,
                where=self.where,
                steps=self.matched,
            ),
        )

    def paths(self) -> tuple[tuple[str, tuple[Step, ...]], ...]:
        """Every nested step list with its key (``matched``, ``events[0].steps``, ...)."""
        return (
            ("matched", self.matched),
            *((f"events[{i}].steps", a.steps) for i, a in enumerate(self.events)),
            ("timed_out", self.timed_out),
            ("not_sent", self.not_sent),
        )


class WaitForStep(Doc, frozen=True):
    id: str
    wait_for: WaitFor


class Case(Doc, frozen=True):
    when: tuple[ConditionNode, ...]
    steps: tuple[Step, ...] = ()
    name: str | None = None


class Branch(Doc, frozen=True):
    cases: tuple[Case, ...]
    otherwise: tuple[Step, ...] = ()


class BranchStep(Doc, frozen=True):
    id: str
    branch: Branch


class SplitPath(Doc, frozen=True):
    percent: float
    steps: tuple[Step, ...] = ()
    name: str | None = None


class Winner(Doc, frozen=True):
    """``winner: {after: 7d, sample: 1000}``: once every condition given holds (the time since
    the version was published, the instances the split has sent down its paths), the path with
    the best goal conversion takes every later entry. The decision is recorded once."""

    after: timedelta | None = None
    sample: int | None = None


class SplitStep(Doc, frozen=True):
    """A random split (an experiment): each instance takes one path by ``percent``. ``sticky``
    keeps a profile that enters again on the path it took first; ``winner`` picks a path for
    every later entry once the experiment has run long enough."""

    id: str
    split: tuple[SplitPath, ...]
    sticky: bool = False
    winner: Winner | None = None

    def path_name(self, index: int) -> str:
        """How a path is named in counters and stats: its ``name``, else its index."""
        return self.split[index].name or str(index)


class Update(Doc, frozen=True):
    """Change the profile's traits from inside a journey, in the same commit as the step.

    ``set`` values are literals, or ``{from: <property path>}`` to copy a value the instance can
    read (``event.properties.cart_id``, ``steps.<id>.event.properties.x``, ``profile.x``);
    ``increment`` adds a number (a trait that is not a number starts from 0); ``unset`` removes
    traits. A trait appears in one of the three at most."""

    set: dict[str, Any] = msgspec.field(default_factory=dict)
    unset: tuple[str, ...] = ()
    increment: dict[str, int | float] = msgspec.field(default_factory=dict)


class UpdateStep(Doc, frozen=True):
    id: str
    update: Update


Step = SendStep | WaitStep | WaitForStep | BranchStep | SplitStep | UpdateStep


class Journey(Doc, frozen=True, kw_only=True):
    kind: Literal["Journey"] = "Journey"
    name: str
    trigger: TriggerSpec
    steps: tuple[Step, ...]
    title: str | None = None
    description: str | None = None
    entry: Entry = msgspec.field(default_factory=Entry)
    exit: tuple[ExitRule, ...] = ()
    goal: Goal | None = None
    rate_limit: str | None = None
    """``500/min``: the journey's sends share one schedule across dispatcher replicas; excess
    sends wait for their turn, in order, and are never dropped (``cairn_common.rates``)."""
    holdout: float | None = None
    """Percent of entering profiles held out as a control group: they go through the journey
    with nothing done to them (no message, no trait change) and their goal conversion is
    counted apart (``holdout:*`` counters), so the journey's lift can be measured."""


# --------------------------------------------------------------------------- templates


class Template(Doc, frozen=True, kw_only=True):
    """A message template; its fields are Liquid source (see :mod:`cairn_journey.render`).

    email: ``subject`` and ``html`` and/or ``text`` (optional ``from``, ``reply_to``,
    ``preheader``); sms: ``body``; push: ``title``, ``body`` (optional ``data``, ``url``,
    ``image``, ``icon``); webhook: ``body`` (optional ``headers``). Whether a template is
    ``draft`` or ``ready`` is control-plane state, not part of the document.
    """

    kind: Literal["Template"] = "Template"
    name: str
    channel: ChannelType
    description: str | None = None
    subject: str | None = None
    html: str | None = None
    text: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    reply_to: str | None = None
    preheader: str | None = None
    title: str | None = None
    body: str | None = None
    data: dict[str, str] | None = None
    url: str | None = None
    image: str | None = None
    icon: str | None = None
    headers: dict[str, str] | None = None


# --------------------------------------------------------------------------- triggers

PropertyType = Literal["string", "number", "integer", "boolean", "object", "array", "datetime"]
PROPERTY_TYPES: tuple[PropertyType, ...] = (
    "string",
    "number",
    "integer",
    "boolean",
    "object",
    "array",
    "datetime",
)


class PropertySpec(Doc, frozen=True):
    type: PropertyType
    required: bool = False
    description: str | None = None


class Trigger(Doc, frozen=True, kw_only=True):
    """An event's declared schema: its name and the types of its properties."""

    kind: Literal["Trigger"] = "Trigger"
    name: str
    event: str
    description: str | None = None
    properties: dict[str, PropertySpec] = msgspec.field(default_factory=dict)
    additional_properties: bool = True
    """``false``: a property not declared here is a violation."""

    def violations(self, properties: dict[str, Any]) -> list[str]:
        """What is wrong with an event's properties against this schema (empty = fine)."""
        from cairn_journey.triggers import property_violations

        return property_violations(self, properties)


# --------------------------------------------------------------------------- channels


class SecretRef(Doc, frozen=True):
    """A credential by reference: ``{env: VAR}`` or ``{file: /path}`` (exactly one)."""

    env: str | None = None
    file: str | None = None


class Channel(Doc, frozen=True, kw_only=True):
    """How one channel is delivered: the provider and its settings.

    ``type`` defaults to the channel's name when that is a channel type (``email``, ...).
    """

    kind: Literal["Channel"] = "Channel"
    name: str
    type: ChannelType
    provider: str
    endpoint: str | None = None
    base_url: str | None = None
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    credentials: dict[str, SecretRef] = msgspec.field(default_factory=dict)
    description: str | None = None


class Destination(Doc, frozen=True, kw_only=True):
    """A downstream tool (Braze, Customer.io, Iterable, a webhook, a destination function)."""

    kind: Literal["Destination"] = "Destination"
    name: str
    provider: str
    endpoint: str | None = None
    base_url: str | None = None
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    credentials: dict[str, SecretRef] = msgspec.field(default_factory=dict)
    function: str | None = None
    """Source of a destination function (provider ``function``)."""
    description: str | None = None


Document = Journey | Template | Trigger | Channel | Destination
DOCUMENT_KINDS: tuple[str, ...] = ("Journey", "Template", "Trigger", "Channel", "Destination")
