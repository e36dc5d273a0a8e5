"""Segment's Tracking API rules: from request bytes to canonical ``Event``s (pure, no I/O).

One mechanism serves every entry point: a single call (``/v1/track``, ...) is a batch of one whose
type comes from the path; ``/v1/batch``, CloudEvents and NATS all end in ``normalise``. A message
that breaks a rule becomes a ``Rejection`` naming the rule; the others in the batch are kept.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from cairn_common.messages import Event, EventSource, EventType, encode
from cairn_common.partitioning import partition_for
from cairn_ingest.storable import MAX_DEPTH, Unstorable, check_storable, lone_surrogate, split_array

EVENT_TYPES: frozenset[str] = frozenset(("track", "identify", "page", "screen", "group", "alias"))
Id = str | int | float


class Rejection(msgspec.Struct, frozen=True):
    """One message that was not accepted, and why (the batch response lists these)."""

    index: int
    code: str
    message: str


class Problem(Exception):
    """A message breaks a rule; ``code`` is machine-readable, the text is for a person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SegmentMessage(msgspec.Struct, rename="camel", kw_only=True):
    """A message as Segment and RudderStack clients send it (unknown fields are ignored)."""

    type: str | None = None
    user_id: Id | None = None
    anonymous_id: Id | None = None
    event: str | None = None
    name: str | None = None
    category: str | None = None
    previous_id: Id | None = None
    group_id: Id | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None
    message_id: str | None = None
    timestamp: datetime | None = None
    original_timestamp: datetime | None = None
    sent_at: datetime | None = None
    write_key: str | None = None


class BatchEnvelope(msgspec.Struct, rename="camel", kw_only=True):
    """``/v1/batch``: the messages are kept raw so each is sized and decoded on its own."""

    batch: list[msgspec.Raw]
    sent_at: datetime | None = None
    write_key: str | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None


class WriteKeyOnly(msgspec.Struct, rename="camel"):
    write_key: str | None = None


_message_decoder = msgspec.json.Decoder(SegmentMessage)
_batch_decoder = msgspec.json.Decoder(BatchEnvelope)
_write_key_decoder = msgspec.json.Decoder(WriteKeyOnly)


class Intake(msgspec.Struct, frozen=True, kw_only=True):
    """Where and when a batch arrived, and the limits it is held to."""

    received_at: datetime
    source: EventSource
    partitions: int
    write_key_id: str | None = None
    max_event_bytes: int = 32 * 1024
    max_message_id_length: int = 256
    max_profile_id_length: int = 1024


def decode_batch(body: bytes) -> BatchEnvelope:
    """``/v1/batch`` body; ``Problem`` (400) when it is not a JSON object with a ``batch`` list."""
    try:
        return _batch_decoder.decode(body)
    except RecursionError:
        return _decode_deep_batch(body)
    except msgspec.ValidationError as exc:
        raise Problem("invalid_batch", f"body is not a batch: {exc}") from None
    except msgspec.DecodeError as exc:
        raise not_json(body, exc, "invalid_batch") from None


def _decode_deep_batch(body: bytes) -> BatchEnvelope:
    """A batch some item of which nests too deep for the decoder: split the items with an
    iterative scan so that item alone is refused (in ``normalise``) and its neighbours are kept."""
    try:
        items, rest = split_array(body, b"batch")
        envelope = _batch_decoder.decode(rest)
    except (ValueError, RecursionError):  # msgspec's errors are ValueErrors too
        raise Problem("invalid_batch", f"JSON nests deeper than {MAX_DEPTH} levels") from None
    envelope.batch = [msgspec.Raw(item) for item in items]
    return envelope


def not_json(raw: bytes | msgspec.Raw, exc: msgspec.DecodeError, code: str) -> Problem:
    """A decode failure as a ``Problem``; an unpaired surrogate escape is named, since the
    decoder's own message for it ("truncated") would mislead."""
    surrogate = lone_surrogate(bytes(raw))
    if surrogate:
        return Problem(
            code, f"a JSON string holds {surrogate}, an unpaired UTF-16 surrogate (not Unicode)"
        )
    return Problem("malformed_json", f"not valid JSON: {exc}")


def body_write_key(body: bytes) -> str | None:
    """The ``writeKey`` field of a JSON object body, if any (for a single call)."""
    try:
        return _write_key_decoder.decode(body).write_key
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None


def normalise(
    raws: Sequence[msgspec.Raw | bytes],
    intake: Intake,
    *,
    decode: Callable[[msgspec.Raw | bytes], SegmentMessage] | None = None,
    check: Callable[[Event], Event] | None = None,
    forced_type: str | None = None,
    sent_at: datetime | None = None,
    context: dict[str, Any] | None = None,
    integrations: dict[str, Any] | None = None,
) -> tuple[list[Event], list[Rejection]]:
    """Decode and validate each raw message; return the accepted events and the rejections."""
    decode = decode or decode_message
    events: list[Event] = []
    rejections: list[Rejection] = []
    for index, raw in enumerate(raws):
        try:
            if len(raw) > intake.max_event_bytes:
                raise Problem(
                    "event_too_large",
                    f"event is {len(raw)} bytes; the limit is {intake.max_event_bytes}",
                )
            message = decode(raw)
            event = to_event(message, intake, forced_type, sent_at, context, integrations)
            _check_as_stored(event, intake)
            events.append(event if check is None else check(event))
        except Problem as problem:
            rejections.append(Rejection(index, problem.code, problem.message))
        except RecursionError:  # any decoder on the way (CloudEvents too)
            too_deep = f"JSON nests deeper than {MAX_DEPTH} levels"
            rejections.append(Rejection(index, "invalid_event", too_deep))
    return events, rejections


_STORED_FIELDS = (
    "message_id", "user_id", "anonymous_id", "previous_id", "group_id", "event",
    "name", "properties", "traits", "context", "integrations",
)  # fmt: skip


def _check_as_stored(event: Event, intake: Intake) -> None:
    """The event as it will be stored (batch-level ``context`` and ``integrations`` merged in)
    holds only storable values and fits the per-event limit."""
    for field in _STORED_FIELDS:
        value = getattr(event, field)
        if value is not None:
            try:
                check_storable(_json_name(field), value)
            except Unstorable as exc:
                raise Problem("invalid_event", str(exc)) from None
    size = len(encode(event))
    if size > intake.max_event_bytes:
        raise Problem(
            "event_too_large",
            f"event is {size} bytes as stored (with the batch's context and integrations "
            f"merged in); the limit is {intake.max_event_bytes}",
        )


def _json_name(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(part.title() for part in rest)


def decode_message(raw: msgspec.Raw | bytes) -> SegmentMessage:
    try:
        return _message_decoder.decode(raw)
    except RecursionError:
        raise Problem("invalid_event", f"JSON nests deeper than {MAX_DEPTH} levels") from None
    except msgspec.ValidationError as exc:
        raise Problem("invalid_event", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise not_json(raw, exc, "invalid_event") from None


def _id(value: Id | None, field: str, limit: int) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        text = str(int(value)) if value.is_integer() else repr(value)
    else:
        text = str(value).strip()
    if not text:
        return None
    if len(text) > limit:
        raise Problem("invalid_event", f"{field} is longer than {limit} characters")
    return text


def _utc(moment: datetime) -> datetime:
    tz = moment.tzinfo
    if tz is UTC:
        return moment  # msgspec decodes "Z" and "+00:00" to datetime.UTC: the common case
    return moment.replace(tzinfo=UTC) if tz is None else moment.astimezone(UTC)


def event_time(
    timestamp: datetime | None, sent_at: datetime | None, received_at: datetime
) -> datetime:
    """Segment's clock-skew correction: ``receivedAt - (sentAt - timestamp)``."""
    if timestamp is None:
        return received_at
    timestamp = _utc(timestamp)
    if sent_at is None:
        return timestamp
    return received_at - (_utc(sent_at) - timestamp)


def _require(condition: object, field: str, kind: str) -> None:
    if not condition:
        raise Problem("invalid_event", f"{field} is required for a {kind} call")


class Ids(msgspec.Struct, frozen=True):
    user_id: str | None
    anonymous_id: str | None
    previous_id: str | None
    group_id: str | None
    event: str | None

    @property
    def profile_id(self) -> str:
        profile = self.user_id or self.anonymous_id
        assert profile is not None
        return profile


def _kind(m: SegmentMessage, forced_type: str | None) -> EventType:
    kind = forced_type or m.type
    if kind is None:
        raise Problem("invalid_event", "type is required in a batch message")
    if kind not in EVENT_TYPES:
        raise Problem(
            "invalid_event", f"type {kind!r} is not one of {', '.join(sorted(EVENT_TYPES))}"
        )
    return kind  # type: ignore[return-value]  # checked against EVENT_TYPES


def _ids(m: SegmentMessage, kind: EventType, limit: int) -> Ids:
    """The identities and names Segment requires for each call type."""
    ids = Ids(
        user_id=_id(m.user_id, "userId", limit),
        anonymous_id=_id(m.anonymous_id, "anonymousId", limit),
        previous_id=_id(m.previous_id, "previousId", limit),
        group_id=_id(m.group_id, "groupId", limit),
        event=(m.event.strip() or None) if m.event and kind == "track" else None,
    )
    if ids.user_id is None and ids.anonymous_id is None:
        raise Problem("invalid_event", "userId or anonymousId is required")
    if kind == "track":
        _require(ids.event, "event", kind)
        if ids.event and len(ids.event) > 200:
            raise Problem("invalid_event", "event name is longer than 200 characters")
    elif kind == "alias":
        _require(ids.previous_id, "previousId", kind)
        _require(ids.user_id, "userId", kind)
    elif kind == "group":
        _require(ids.group_id, "groupId", kind)
    return ids


def _message_id(m: SegmentMessage, limit: int) -> str:
    message_id = m.message_id.strip() if m.message_id else ""
    if not message_id:
        return str(uuid.uuid4())
    if len(message_id) > limit:
        raise Problem("invalid_event", f"messageId is longer than {limit} characters")
    if not message_id.isprintable():  # it travels in a NATS header
        raise Problem("invalid_event", "messageId may not hold control characters")
    return message_id


def _merged(own: dict[str, Any] | None, batch: dict[str, Any] | None) -> dict[str, Any]:
    own = own if own is not None else {}
    return {**batch, **own} if batch else own


def to_event(
    m: SegmentMessage,
    intake: Intake,
    forced_type: str | None = None,
    batch_sent_at: datetime | None = None,
    batch_context: dict[str, Any] | None = None,
    batch_integrations: dict[str, Any] | None = None,
) -> Event:
    kind = _kind(m, forced_type)
    ids = _ids(m, kind, intake.max_profile_id_length)
    message_id = _message_id(m, intake.max_message_id_length)
    context = _merged(m.context, batch_context)
    properties = m.properties if m.properties is not None else {}
    if kind in ("page", "screen") and m.category is not None and "category" not in properties:
        properties = {**properties, "category": m.category}
    traits = m.traits if m.traits is not None else {}
    if kind == "identify" and isinstance(context.get("traits"), dict):
        traits = {**context["traits"], **traits}  # RudderStack sends identify traits there
    sent_at = m.sent_at or batch_sent_at
    profile_id = ids.profile_id
    return Event(
        message_id=message_id,
        type=kind,
        profile_id=profile_id,
        partition=partition_of(profile_id, intake.partitions),
        received_at=intake.received_at,
        timestamp=event_time(m.timestamp or m.original_timestamp, sent_at, intake.received_at),
        event=ids.event,
        user_id=ids.user_id,
        anonymous_id=ids.anonymous_id,
        previous_id=ids.previous_id,
        group_id=ids.group_id,
        name=m.name,
        properties=properties,
        traits=traits,
        context=context,
        integrations=_merged(m.integrations, batch_integrations),
        sent_at=_utc(sent_at) if sent_at is not None else None,
        source=intake.source,
        write_key=intake.write_key_id,
    )


partition_of = functools.lru_cache(maxsize=65_536)(partition_for)
"""``partition_for`` remembered: a client's batches mostly repeat a few profiles."""


def now() -> datetime:
    return datetime.now(UTC)
