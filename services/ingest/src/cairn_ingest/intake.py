"""What ingest does with a request, whatever carried it (HTTP or NATS): authenticate, validate,
check trigger schemas, rate-limit, publish, and answer.

The answer is a ``Reply`` (status, JSON body, headers); the HTTP and NATS fronts only transport it,
so both give the same result for the same input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import asyncpg
import msgspec
import structlog

from cairn_common.messages import Event, EventSource
from cairn_ingest import cloudevents
from cairn_ingest.access import KnownKey, WriteKeys
from cairn_ingest.publisher import EventPublisher, Unavailable
from cairn_ingest.schemas import TriggerSchemas
from cairn_ingest.segment import (
    Intake,
    Problem,
    Rejection,
    SegmentMessage,
    body_write_key,
    decode_batch,
    normalise,
    now,
)
from cairn_ingest.settings import Settings

log = structlog.get_logger(__name__)

SINGLE_TYPES = ("track", "identify", "page", "screen", "group", "alias")
_encoder = msgspec.json.Encoder()


class Reply(msgspec.Struct, frozen=True):
    status: int
    body: bytes
    headers: dict[str, str] = msgspec.field(default_factory=dict)


OK = Reply(200, b'{"success":true}')


def error(status: int, code: str, message: str, **extra: Any) -> Reply:
    headers = {"Retry-After": str(extra.pop("retry_after"))} if "retry_after" in extra else {}
    return Reply(status, _encoder.encode({"code": code, "message": message, **extra}), headers)


def _problem_reply(problem: Problem) -> Reply:
    status = 413 if problem.code.endswith("too_large") else 400
    return error(status, problem.code, problem.message)


class Ingestor:
    def __init__(
        self,
        settings: Settings,
        keys: WriteKeys,
        publisher: EventPublisher,
        schemas: Callable[[], TriggerSchemas] = TriggerSchemas,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.publisher = publisher
        self.schemas = schemas

    # ---- entry points ---------------------------------------------------------------------------
    async def segment(
        self, kind: str | None, body: bytes, write_key: str | None, source: EventSource
    ) -> Reply:
        """A Segment call: ``kind`` is the single type (``track``...) or None for a batch."""
        if len(body) > self.settings.max_batch_bytes:
            return self._body_too_large(len(body))
        if kind is not None:
            secret = write_key or body_write_key(body)
            return await self._accept(secret, source, [body], single=True, forced_type=kind)
        try:
            envelope = decode_batch(body)
        except Problem as problem:
            return _problem_reply(problem)
        if len(envelope.batch) > self.settings.max_batch_events:
            return self._too_many(len(envelope.batch))
        return await self._accept(
            write_key or envelope.write_key,
            source,
            envelope.batch,
            single=False,
            sent_at=envelope.sent_at,
            context=envelope.context,
            integrations=envelope.integrations,
        )

    async def cloudevents(
        self, body: bytes, headers: Mapping[str, str], content_type: str, write_key: str | None
    ) -> Reply:
        if len(body) > self.settings.max_batch_bytes:
            return self._body_too_large(len(body))
        media = content_type.split(";")[0].strip().lower()
        if media == cloudevents.BATCH:
            try:
                raws = cloudevents.decode_batch(body)
            except Problem as problem:
                return _problem_reply(problem)
            if len(raws) > self.settings.max_batch_events:
                return self._too_many(len(raws))
            return await self._accept(
                write_key, "cloudevents", raws, single=False, decode=cloudevents.from_structured
            )
        if media == cloudevents.STRUCTURED:
            return await self._accept(
                write_key, "cloudevents", [body], single=True, decode=cloudevents.from_structured
            )
        if not any(h.lower() == "ce-specversion" for h in headers):
            return error(
                400,
                "not_a_cloudevent",
                f"Content-Type {content_type or '(none)'} is neither {cloudevents.STRUCTURED} "
                f"nor {cloudevents.BATCH}, and no ce-specversion header marks binary mode",
            )

        def binary(raw: msgspec.Raw | bytes) -> SegmentMessage:
            return cloudevents.from_binary(headers, bytes(raw), content_type)

        return await self._accept(write_key, "cloudevents", [body], single=True, decode=binary)

    async def internal(self, events: Sequence[Event]) -> int:
        """Events Cairn makes itself (email opens, clicks, unsubscribes); no write key. Returns
        how many were duplicates."""
        return await self.publisher.publish(events)

    # ---- the one mechanism ----------------------------------------------------------------------
    async def _accept(
        self,
        secret: str | None,
        source: EventSource,
        raws: Sequence[msgspec.Raw | bytes],
        *,
        single: bool,
        **normalise_args: Any,
    ) -> Reply:
        key = await self._authenticate(secret)
        if isinstance(key, Reply):
            return key
        events, rejected = normalise(
            raws, self._intake(source, key), check=self._schema_check(), **normalise_args
        )
        if single and rejected:
            return _problem_reply(Problem(rejected[0].code, rejected[0].message))
        if rejected and not events:
            return error(
                400,
                "invalid_batch",
                f"none of the {len(rejected)} events is valid",
                rejected=[_rejection(r) for r in rejected],
            )
        if events:
            wait = self.keys.admit(key, len(events))
            if wait:
                return error(
                    429,
                    "rate_limited",
                    f"write key {key.key_id} is over its limit of {key.rate_limit} events/s",
                    retry_after=wait,
                )
            try:
                await self.publisher.publish(events)
            except Unavailable as exc:
                log.warning("events not accepted", reason=str(exc), events=len(events))
                if exc.full:
                    return error(
                        503,
                        "backlog_full",
                        "Cairn's event backlog is full (CAIRN_INPUTS_MAX_BYTES); events not "
                        "stored; retry",
                        retry_after=5,
                    )
                return error(503, "unavailable", "events not stored; retry", retry_after=1)
        if not rejected:
            return OK
        body = {
            "success": True,
            "accepted": len(events),
            "rejected": [_rejection(r) for r in rejected],
        }
        return Reply(200, _encoder.encode(body))

    async def _authenticate(self, secret: str | None) -> KnownKey | Reply:
        if not secret:
            return error(
                401,
                "missing_write_key",
                "a write key is required: send it as the HTTP Basic user or as writeKey",
            )
        try:
            key = await self.keys.lookup(secret)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return error(503, "unavailable", "cannot check the write key now; retry", retry_after=1)
        if key is None:
            return error(401, "invalid_write_key", "unknown or revoked write key")
        return key

    def _intake(self, source: EventSource, key: KnownKey) -> Intake:
        s = self.settings
        return Intake(
            received_at=now(),
            source=source,
            partitions=s.partitions,
            write_key_id=key.key_id,
            max_event_bytes=s.max_event_bytes,
            max_message_id_length=s.max_message_id_length,
            max_profile_id_length=s.max_profile_id_length,
        )

    def _schema_check(self) -> Callable[[Event], Event] | None:
        schemas = self.schemas()
        mode: Literal["reject", "flag", "off"] = self.settings.trigger_schema_mode
        if not schemas or mode == "off":
            return None

        def check(event: Event) -> Event:
            problems = schemas.violations(event.event, event.properties)
            if not problems:
                return event
            if mode == "reject":
                raise Problem("schema_violation", "; ".join(problems))
            previous = event.context.get("cairn")
            cairn = {
                **(previous if isinstance(previous, dict) else {}),
                "schema_violations": problems,
            }
            return msgspec.structs.replace(event, context={**event.context, "cairn": cairn})

        return check

    def _body_too_large(self, size: int) -> Reply:
        return error(
            413,
            "batch_too_large",
            f"request body is {size} bytes; the limit is {self.settings.max_batch_bytes}",
        )

    def _too_many(self, count: int) -> Reply:
        return error(
            413,
            "too_many_events",
            f"batch holds {count} events; the limit is {self.settings.max_batch_events}",
        )


def _rejection(r: Rejection) -> dict[str, Any]:
    return {"index": r.index, "code": r.code, "message": r.message}
