"""Dead letters: what a consumer gave up on, readable by an operator, re-drivable after a fix.

Poison inputs, outbox rows that can never be published and messages that ran out of deliveries end
as a ``DeadLetter`` in the dead-letter stream (``Topology.dead_letter_stream``), one message each.
A dead letter's id is its sequence in that stream, so ids are stable and ordered without a table
of our own. Reading never fails on what it reads: an original that does not decode is shown as
bytes, and a message on the stream that is not a ``DeadLetter`` at all is listed as unreadable.

Re-driving publishes the original bytes and headers to the original subject with
``Nats-Msg-Id: redrive-<id>-<when the dead letter was stored>`` and only then deletes the dead
letter: a re-drive interrupted between the two, or sent twice, publishes once (JetStream's
duplicate window) and the second one finds the dead letter gone (404). A re-driven message that
fails again comes back as a new dead letter.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Literal

import msgspec
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from cairn_common.bus import MSG_ID, REDRIVE_HEADER
from cairn_common.failures import describe, is_transient
from cairn_common.messages import (
    DeadLetter,
    DeliveryRequested,
    DeliveryResult,
    Event,
    ExitInstances,
    Message,
    TimerFired,
    decode,
)
from cairn_common.topology import Topology
from cairn_control.errors import Conflict, Invalid, NotFound, Unavailable

Order = Literal["newest", "oldest"]
MAX_LIMIT = 500
DEFAULT_LIMIT = 50
MAX_SCAN = 5000
"""Stream sequences one page looks at, at most: a filter that matches little (or many deleted
sequences) ends the page early with a cursor to go on from, rather than reading the whole stream."""
READ_AHEAD = 50
"""Sequences read concurrently when walking the stream newest first."""
MAX_ORIGINAL_TEXT = 64 * 1024
TRACE_HEADERS = ("traceparent", "tracestate", "baggage")
NO_MESSAGE = 10037
"""JetStream's "no message found": the sequence was deleted (or never was)."""
NO_STREAM = 10059


class DeadLetterItem(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    """The dead letter's sequence in the dead-letter stream."""
    at: datetime | None
    stream: str
    """The stream the original came from."""
    consumer: str
    subject: str
    """The original's subject; a re-drive publishes there."""
    deliveries: int
    reason: str
    size: int
    """Bytes of the original message."""
    message_type: str | None = None
    """``event``, ``delivery_requested``, ... when the original is a Cairn message."""
    profile_id: str | None = None
    message_id: str | None = None
    """The event's message id, the delivery's or timer's id, when there is one."""


class DeadLetterList(msgspec.Struct, frozen=True, kw_only=True):
    dead_letters: list[DeadLetterItem]
    total: int
    """Dead letters in the stream (of the source stream asked for), before other filters."""
    next_cursor: int | None
    """Pass as ``cursor`` for the next page; null when there is nothing more."""


class DeadLetterDetail(msgspec.Struct, frozen=True, kw_only=True):
    dead_letter: DeadLetterItem
    headers: dict[str, str]
    """The original message's headers (trace context among them)."""
    stream_seq: int | None
    """The original's sequence in its own stream."""
    original: Any = None
    """The original message as JSON, when it is JSON."""
    original_text: str | None = None
    """The original bytes as text (invalid UTF-8 replaced), when they are not JSON."""


class Redriven(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    subject: str
    msg_id: str
    stream: str
    """Where the re-driven message was stored, and at which sequence."""
    seq: int
    duplicate: bool
    """JetStream already had this re-drive (a repeated request): stored once."""
    message: str


class Discarded(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    message: str


class ListQuery(msgspec.Struct, frozen=True, kw_only=True):
    limit: int = DEFAULT_LIMIT
    cursor: int | None = None
    order: Order = "newest"
    stream: str | None = None
    consumer: str | None = None
    subject: str | None = None


# ---- reading -------------------------------------------------------------------------------------


async def list_dead_letters(
    js: JetStreamContext, topology: Topology, query: ListQuery
) -> DeadLetterList:
    if not 1 <= query.limit <= MAX_LIMIT:
        raise Invalid(f"limit must be between 1 and {MAX_LIMIT}, not {query.limit}")
    if query.cursor is not None and query.cursor < 1:
        raise Invalid(f"cursor must be a positive number, not {query.cursor}")
    subjects = (
        topology.dead_letter_subject(query.stream) if query.stream else f"{_prefix(topology)}>"
    )
    async with _nats("list the dead letters"):
        info = await js.stream_info(topology.dead_letter_stream, subjects_filter=subjects)
        total = (
            info.state.messages
            if not query.stream
            else (info.state.subjects or {}).get(subjects, 0)
        )
        scan = _newest_first if query.order == "newest" else _oldest_first
        items: list[DeadLetterItem] = []
        cursor: int | None = None
        async for seq, raw in scan(
            js, topology.dead_letter_stream, info.state, query.cursor, subjects
        ):
            cursor = seq
            if raw is None:
                continue
            item = summarise(seq, raw.data or b"", raw.subject or "", topology)
            if _wanted(item, query):
                items.append(item)
                if len(items) == query.limit:
                    break
    more = cursor is not None and (
        cursor > info.state.first_seq if query.order == "newest" else cursor < info.state.last_seq
    )
    return DeadLetterList(dead_letters=items, total=total, next_cursor=cursor if more else None)


async def get_dead_letter(
    js: JetStreamContext, topology: Topology, letter_id: int
) -> DeadLetterDetail:
    raw = await _read(js, topology, letter_id)
    data = raw.data or b""
    item = summarise(letter_id, data, raw.subject or "", topology)
    letter = _letter_of(data)
    if letter is None:
        return DeadLetterDetail(
            dead_letter=item, headers={}, stream_seq=None, original_text=_text(data)
        )
    try:
        original = msgspec.json.decode(letter.data)
    except msgspec.DecodeError:
        return DeadLetterDetail(
            dead_letter=item, headers=letter.headers, stream_seq=letter.stream_seq,
            original_text=_text(letter.data),
        )  # fmt: skip
    return DeadLetterDetail(
        dead_letter=item, headers=letter.headers, stream_seq=letter.stream_seq, original=original
    )


def summarise(seq: int, data: bytes, dlq_subject: str, topology: Topology) -> DeadLetterItem:
    """One line about a dead letter; never raises on what the stream holds."""
    letter = _letter_of(data)
    if letter is None:
        source = dlq_subject.removeprefix(_prefix(topology))
        return DeadLetterItem(
            id=seq, at=None, stream=source, consumer="", subject="", deliveries=0,
            reason="unreadable: this message on the dead-letter stream is not a dead letter",
            size=len(data),
        )  # fmt: skip
    original: Message | None
    try:
        original = decode(letter.data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        original = None
    return DeadLetterItem(
        id=seq, at=letter.at, stream=letter.stream, consumer=letter.consumer,
        subject=letter.subject, deliveries=letter.deliveries, reason=letter.reason,
        size=len(letter.data), message_type=_tag(original),
        profile_id=getattr(original, "profile_id", None), message_id=_message_id(original),
    )  # fmt: skip


def _letter_of(data: bytes) -> DeadLetter | None:
    try:
        message = decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return message if isinstance(message, DeadLetter) else None


def _tag(message: Message | None) -> str | None:
    if message is None:
        return None
    tag = type(message).__struct_config__.tag
    return tag if isinstance(tag, str) else None


def _message_id(message: Message | None) -> str | None:
    match message:
        case Event(message_id=message_id):
            return message_id
        case DeliveryRequested(delivery_id=delivery_id) | DeliveryResult(delivery_id=delivery_id):
            return delivery_id
        case TimerFired(timer_id=timer_id):
            return timer_id
        case ExitInstances() | DeadLetter() | None:
            return None


def _wanted(item: DeadLetterItem, query: ListQuery) -> bool:
    if query.consumer is not None and item.consumer != query.consumer:
        return False
    return query.subject is None or subject_matches(query.subject, item.subject)


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">" and i == len(want) - 1:
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def _text(data: bytes) -> str:
    text = data[:MAX_ORIGINAL_TEXT].decode("utf-8", errors="replace")
    return text if len(data) <= MAX_ORIGINAL_TEXT else text + "..."


def _prefix(topology: Topology) -> str:
    return topology.dead_letter_subject("")


# ---- walking the stream --------------------------------------------------------------------------


async def _newest_first(
    js: JetStreamContext, stream: str, state: api.StreamState, cursor: int | None, subjects: str
) -> AsyncIterator[tuple[int, api.RawStreamMsg | None]]:
    """Downwards from below ``cursor`` (or the last sequence), a sequence at a time: JetStream
    has no "previous message", so deleted sequences are read as gaps (``None``)."""
    top = state.last_seq if cursor is None else min(cursor - 1, state.last_seq)
    bottom = max(state.first_seq, top - MAX_SCAN + 1, 1)
    for high in range(top, bottom - 1, -READ_AHEAD):
        seqs = range(high, max(high - READ_AHEAD, bottom - 1), -1)
        found = await asyncio.gather(*(_get_or_none(js, stream, s) for s in seqs))
        for seq, raw in zip(seqs, found, strict=True):
            matches = raw is not None and subject_matches(subjects, raw.subject or "")
            yield seq, raw if matches else None


async def _oldest_first(
    js: JetStreamContext, stream: str, state: api.StreamState, cursor: int | None, subjects: str
) -> AsyncIterator[tuple[int, api.RawStreamMsg | None]]:
    """Upwards from above ``cursor``; the server skips deleted sequences and other subjects."""
    seq = max(state.first_seq, 1) if cursor is None else cursor + 1
    for _ in range(MAX_SCAN):
        if seq > state.last_seq:
            return
        try:
            raw = await js.get_msg(stream, seq=seq, subject=subjects, next=True)
        except NotFoundError:
            return
        assert raw.seq is not None
        yield raw.seq, raw
        seq = raw.seq + 1


async def _get_or_none(js: JetStreamContext, stream: str, seq: int) -> api.RawStreamMsg | None:
    try:
        return await js.get_msg(stream, seq=seq)
    except NotFoundError as exc:
        if exc.err_code not in (NO_MESSAGE, None):
            raise  # the stream itself is missing: not "no such dead letter"
        return None


async def _read(js: JetStreamContext, topology: Topology, letter_id: int) -> api.RawStreamMsg:
    async with _nats("read the dead letter"):
        raw = await _get_or_none(js, topology.dead_letter_stream, letter_id)
    if raw is None:
        raise NotFound(f"dead letter {letter_id} does not exist (re-driven or discarded?)")
    return raw


@asynccontextmanager
async def _nats(what: str) -> AsyncIterator[None]:
    """NATS not answering is a 503 the caller may retry; anything else is a bug to see."""
    try:
        yield
    except (NatsError, TimeoutError) as exc:
        if isinstance(exc, NotFoundError) and exc.err_code == NO_STREAM:
            raise Unavailable(f"cannot {what}: the dead-letter stream does not exist") from None
        if is_transient(exc):
            raise Unavailable(f"cannot {what}: NATS is not answering ({describe(exc)})") from None
        raise


# ---- acting --------------------------------------------------------------------------------------


async def redrive(js: JetStreamContext, topology: Topology, letter_id: int) -> Redriven:
    raw = await _read(js, topology, letter_id)
    letter = _letter_of(raw.data or b"")
    if letter is None:
        raise Conflict(f"dead letter {letter_id} is unreadable, so it cannot be re-driven")
    msg_id = redrive_msg_id(letter_id, raw.time)
    headers = redrive_headers(letter, raw.headers or {}, msg_id, letter_id)
    async with _nats(f"re-drive dead letter {letter_id}"):
        try:
            ack = await js.publish(letter.subject, letter.data, headers=headers, timeout=5)
        except NatsError as exc:
            if is_transient(exc):
                raise
            raise Conflict(
                f"dead letter {letter_id} cannot be published to {letter.subject}: {describe(exc)}"
            ) from None
        await _delete(js, topology, letter_id)
    again = " (already re-driven: stored once)" if ack.duplicate else ""
    return Redriven(
        id=letter_id, subject=letter.subject, msg_id=msg_id, stream=ack.stream, seq=ack.seq,
        duplicate=bool(ack.duplicate),
        message=f"dead letter {letter_id} re-driven to {letter.subject} "
        f"({ack.stream} #{ack.seq}){again} and removed from the dead letters",
    )  # fmt: skip


def redrive_msg_id(letter_id: int, stored_at: datetime | None) -> str:
    """The same for every re-drive of one dead letter, so JetStream stores it once. The time the
    dead letter was stored tells it from a dead letter with the same id in a stream recreated
    since (whose re-drive must not be taken for a duplicate)."""
    stamp = f"-{stored_at:%Y%m%dT%H%M%S%f}" if stored_at is not None else ""
    return f"redrive-{letter_id}{stamp}"


def redrive_headers(
    letter: DeadLetter, envelope: dict[str, str], msg_id: str, letter_id: int
) -> dict[str, str]:
    """The original's headers without JetStream's own (its old ``Nats-Msg-Id`` would be
    deduplicated, ``Nats-Expected-*`` refused), its trace context (from the dead letter's own
    headers when the original had none), and the re-drive's id."""
    headers = {k: v for k, v in letter.headers.items() if not k.lower().startswith("nats-")}
    for key in TRACE_HEADERS:
        if key not in headers and key in envelope:
            headers[key] = envelope[key]
    headers[MSG_ID] = msg_id
    headers[REDRIVE_HEADER] = str(letter_id)
    return headers


async def discard(js: JetStreamContext, topology: Topology, letter_id: int) -> Discarded:
    await _read(js, topology, letter_id)
    async with _nats(f"discard dead letter {letter_id}"):
        await _delete(js, topology, letter_id)
    return Discarded(id=letter_id, message=f"dead letter {letter_id} discarded")


async def _delete(js: JetStreamContext, topology: Topology, letter_id: int) -> None:
    """Deleting what a concurrent request deleted first is done, not an error."""
    stream = topology.dead_letter_stream
    try:
        await js.delete_msg(stream, letter_id)
    except NatsError:
        if await _get_or_none(js, stream, letter_id) is not None:
            raise
