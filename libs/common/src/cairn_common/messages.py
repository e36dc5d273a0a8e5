"""Wire contracts between Cairn's services.

Every message that crosses a service boundary is one of the tagged ``msgspec.Struct``s below,
encoded as JSON. Rules that keep rolling deploys safe:

- a new field always gets a default, so an older reader ignores it and a newer reader of an older
  message sees the default;
- a tag never changes meaning; a breaking change is a new tag.

Subjects and streams that carry these messages are declared in ``cairn_common.topology``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from cairn_common.rates import RateLimit


class Wire(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="msg_type"):
    """Base of every wire message: the JSON carries ``"msg_type": "<tag>"``."""


EventType = Literal["track", "identify", "page", "screen", "group", "alias"]
EventSource = Literal["http", "cloudevents", "nats", "tracking", "dispatcher", "internal"]


class Event(Wire, frozen=True, kw_only=True, tag="event"):
    """A canonical event, whatever way it came in (Segment HTTP, CloudEvents, NATS).

    ``profile_id`` is ``user_id`` if there is one, else ``anonymous_id``. ``timestamp`` is the
    event's own time (corrected for client clock skew as Segment does); journey logic runs on
    processing time, but the event's time is kept and shown.
    """

    message_id: str
    type: EventType
    profile_id: str
    partition: int
    received_at: datetime
    timestamp: datetime
    event: str | None = None
    user_id: str | None = None
    anonymous_id: str | None = None
    previous_id: str | None = None
    group_id: str | None = None
    name: str | None = None
    properties: dict[str, Any] = msgspec.field(default_factory=dict)
    traits: dict[str, Any] = msgspec.field(default_factory=dict)
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    integrations: dict[str, Any] = msgspec.field(default_factory=dict)
    sent_at: datetime | None = None
    source: EventSource = "http"
    write_key: str | None = None

    @property
    def dedupe_key(self) -> str:
        """What makes an event a repeat: its messageId within its source (the write key's id),
        as Segment's are unique per source, so one source's messageIds never shadow another's.
        Cairn's own events (tracking hits) have no write key and keep their messageId."""
        return f"{self.write_key}/{self.message_id}" if self.write_key else self.message_id


class TimerFired(Wire, frozen=True, kw_only=True, tag="timer_fired"):
    """A timer came due. Sent by the scheduler into the profile's partition.

    A fire for a timer that no longer exists (cancelled by an exit, already fired) is ignored by
    the matcher, so the scheduler may fire at least once.
    """

    timer_id: str
    profile_id: str
    partition: int
    instance_id: str
    step_id: str
    due_at: datetime
    fired_at: datetime
    kind: str = "wait"
    after_outage: bool = False
    """The inputs stream refused this fire at least once (a NATS election, a restart): inputs
    accepted meanwhile (ingest's tracking backlog) may still be on their way in. A ``wait_for``
    window waits a little longer for them (decision 0065)."""


DeliveryOutcome = Literal[
    "sent", "failed", "skipped", "suppressed", "deferred", "dropped", "dead_lettered", "bounced"
]


class DeliveryRequested(Wire, frozen=True, kw_only=True, tag="delivery_requested"):
    """The matcher asks the dispatcher to send one message (transactional outbox).

    ``delivery_id`` is deterministic — derived from (instance, step, visit) — so a redelivered
    request is recognised by the dispatcher's ledger and travels to providers as their idempotency
    key (``webhook-id``, Iterable's event ``id``, ...).
    """

    delivery_id: str
    profile_id: str
    journey: str
    version: int
    instance_id: str
    step_id: str
    visit: int
    requested_at: datetime
    channel: str | None = None
    destination: str | None = None
    template: str | None = None
    to: str | None = None
    address: str | None = None
    profile: dict[str, Any] = msgspec.field(default_factory=dict)
    event: dict[str, Any] = msgspec.field(default_factory=dict)
    matched_events: dict[str, Any] = msgspec.field(default_factory=dict)
    unique_value: str | None = None
    template_document: dict[str, Any] | None = None
    """The Template document as the journey version was published with it, when the sender has
    it; otherwise the dispatcher looks the template up by name."""
    rate_limit: RateLimit | None = None
    """The journey's ``rate_limit``: its sends share one schedule across dispatcher replicas."""


class DeliveryResult(Wire, frozen=True, kw_only=True, tag="delivery_result"):
    """The dispatcher reports what became of a delivery; it re-enters the profile's partition so
    journeys and analytics can see it."""

    delivery_id: str
    profile_id: str
    partition: int
    instance_id: str
    step_id: str
    outcome: DeliveryOutcome
    at: datetime
    channel: str | None = None
    destination: str | None = None
    reason: str | None = None
    provider_message_id: str | None = None
    attempts: int = 1
    held_for: float | None = None
    """Seconds a rate limit held the message back before it was sent (``sent`` only)."""


class DeadLetter(Wire, frozen=True, kw_only=True, tag="dead_letter"):
    """A message a consumer gave up on, with the reason. The original bytes are kept verbatim."""

    stream: str
    consumer: str
    subject: str
    reason: str
    deliveries: int
    at: datetime
    data: bytes
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    stream_seq: int | None = None


class ExitInstances(Wire, frozen=True, kw_only=True, tag="exit_instances"):
    """Exit every running instance of ``journey`` for one profile at once (a stop with exit-all).

    Sent by the control plane into the profile's partition
    (``topology.input_subject(partition, "control")``) so it is ordered with the profile's other
    inputs; applying it twice changes nothing.
    """

    profile_id: str
    partition: int
    journey: str
    reason: str = "stopped"


ProfileInput = Event | TimerFired | DeliveryResult | ExitInstances
"""Everything that enters a profile's partition; the matcher handles them one at a time."""

Message = Event | TimerFired | DeliveryRequested | DeliveryResult | DeadLetter | ExitInstances

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Message] = msgspec.json.Decoder(Message)


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decode(data: bytes) -> Message:
    """Decode any wire message; raises ``msgspec.ValidationError``/``DecodeError`` naming the
    field when the bytes do not match the contract."""
    return _decoder.decode(data)
