"""What the dispatcher does with a fetched batch of delivery requests.

For each request, in order: the ledger (a delivery that reached a terminal status is never sent
again; its result is re-published and the message acked), the instance (an exited instance's send
is dropped), the target document, the address, consent and suppressions, the frequency cap, quiet
hours (deferred to their end, not dropped), rate limits (a slot of the schedule the replicas
share, ``cairn_dispatcher.rates``; deferred until it, not dropped), the template. What is left
is sent concurrently, each provider bounding its own concurrency. Then one ledger write for the
whole batch (the suppressions its bounces and unsubscribes caused in the same transaction), the
results published into each profile's partition, and only then the acks.

Failures follow ``cairn_common.failures``. What is wrong with one request (an id or address that
cannot be stored, a template that does not render, a ledger row the database refuses) is that
delivery's outcome, never the batch's: its neighbours are sent and recorded once. Once provider
calls were made, a transient failure of the ledger write (the database away) is retried in place
while JetStream is told the batch is still in progress: what was sent is recorded, not sent again.
Before its provider call a delivery is claimed in the ledger (``sending``, in this replica's name,
renewed while the call and the ledger write are under way; decision 0064). A copy redelivered
meanwhile (an in-progress ack lost in a NATS leader election outlives the ack wait) meets the
claim and waits for the outcome instead of being sent twice. Only a crash between a provider
call and the ledger write sends a request once more, with the same idempotency key (delivery
id), once the dead replica's claim lapses or the replica is back: at most one duplicate, which
providers that honour the key drop.

A request re-driven from the dead letters (``Cairn-Redrive``) whose delivery was recorded as
``dead_lettered`` is tried again: the operator fixed what was wrong.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog
from nats.js.client import JetStreamContext
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from prometheus_client import Counter, Histogram

from cairn_common.bus import MSG_ID, REDRIVE_HEADER
from cairn_common.consume import ACK, Incoming, Outcome, Reject, Retry
from cairn_common.failures import Backoff, describe, is_transient
from cairn_common.messages import DeliveryRequested, DeliveryResult
from cairn_common.observability import tracing_enabled
from cairn_common.rates import RateLimit
from cairn_common.storable import string_problem
from cairn_common.topology import Topology
from cairn_common.waiting import wait_any
from cairn_dispatcher.documents import DocumentError, Target
from cairn_dispatcher.lookup import Lookup
from cairn_dispatcher.policy import consent_refusal, quiet_until
from cairn_dispatcher.providers.base import Failed, Job, SendOutcome
from cairn_dispatcher.providers.registry import Providers
from cairn_dispatcher.rates import SendRates
from cairn_dispatcher.repo import (
    TERMINAL,
    ClaimRequest,
    DeliveryLedger,
    Instances,
    LedgerEntry,
    LedgerKey,
    LedgerRow,
    Suppression,
    Suppressions,
)
from cairn_dispatcher.results import ResultPublisher
from cairn_dispatcher.settings import Settings
from cairn_journey.render import RenderError, render

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("cairn.dispatcher")
DELIVERIES = Counter("cairn_deliveries_total", "Delivery outcomes", ["target", "outcome"])
PROVIDER_SECONDS = Histogram(
    "cairn_dispatcher_provider_call_seconds",
    "One provider call (HTTP request, SMTP transaction), by provider and result",
    ["provider", "result"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
RATE_LIMITED = Counter(
    "cairn_dispatcher_rate_limited_total",
    "Sends deferred to a later slot by a rate limit (journey, channel or destination)",
    ["target"],
)
RATE_LIMIT_HELD = Histogram(
    "cairn_dispatcher_rate_limit_held_seconds",
    "How long a rate limit held a message back before it was sent",
    ["target"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0),
)
SLOT_SLACK = 0.02
"""A slot this close (seconds) is due: sent now rather than deferred for a few milliseconds."""
REQUEST_TO_SENT = Histogram(
    "cairn_dispatcher_request_to_sent_seconds",
    "From the matcher's delivery request (requested_at) to the provider accepting the message",
    ["target"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    status: str
    """Ledger status. 'retrying' has no published result; nor has 'sending' (another replica
    holds the delivery's claim: this copy neither records nor reports anything, it waits)."""
    settle: Outcome
    reason: str | None = None
    provider_message_id: str | None = None


class Pending(msgspec.Struct, kw_only=True):
    item: Incoming
    req: DeliveryRequested
    target: Target | None = None
    address: str | None = None
    decision: Decision | None = None
    job: Job | None = None
    suppress: str | None = None
    """A suppression this delivery's outcome causes ('bounced', 'unsubscribed'), written with
    its ledger row."""
    span: Span | None = None
    """CONSUMER span of this request, continuing the trace of the input that caused it."""
    sent_at: datetime | None = None
    """When the provider took the message: a journey's next wait counts from here."""
    row: LedgerRow | None = None
    """What the ledger already holds for this delivery (an earlier attempt or deferral)."""
    slot_at: datetime | None = None
    """The rate-limit slot it goes at (``cairn_dispatcher.rates``)."""
    held_since: datetime | None = None
    """When a rate limit first held it back."""
    unrecordable: bool = False
    """The database refused even its claim: no ledger row of it can be written."""


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        js: JetStreamContext,
        topology: Topology,
        ledger: DeliveryLedger,
        instances: Instances,
        suppressions: Suppressions,
        lookup: Lookup,
        providers: Providers,
        results: ResultPublisher,
        rates: SendRates,
    ) -> None:
        self.settings = settings
        self._js = js
        self._topology = topology
        self._ledger = ledger
        self._instances = instances
        self._suppressions = suppressions
        self._lookup = lookup
        self._providers = providers
        self._results = results
        self._rates = rates
        self._claims: dict[str, float] = {}
        """Deliveries this process holds claims on (being sent), and when each was last
        written (monotonic)."""

    async def keep_claims(self, stopping: asyncio.Event) -> None:
        """Renew the claims of deliveries still being sent, every third of their lifetime, so
        a slow provider call or a ledger write waiting for the database keeps its claim while
        a dead process's claims lapse."""
        every = self.settings.claim_seconds / 3
        while True:
            await wait_any(stopping, timeout=every)
            if stopping.is_set():
                return
            due = time.monotonic() - every
            ids = [d for d, at in self._claims.items() if at <= due]
            if not ids:
                continue
            try:
                await self._ledger.renew(ids, self.settings.replica_id, self.settings.claim_seconds)
            except Exception as exc:  # the next round tries again; the ledger write decides
                log.warning("renewing delivery claims failed", error=describe(exc))
                continue
            now = time.monotonic()
            for d in ids:
                if d in self._claims:
                    self._claims[d] = now

    async def __call__(self, batch: Sequence[Incoming]) -> list[Outcome]:
        """Handle a batch while telling JetStream it is still being worked on: the consumer's
        ack wait (3 s) is shorter than a slow provider call, and a redelivery to another replica
        mid-send would be a duplicate; a killed dispatcher's batch is redelivered that soon."""
        done = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._keep_alive(batch, done))
            try:
                return await self._dispatch(batch)
            finally:
                done.set()

    async def _keep_alive(self, batch: Sequence[Incoming], done: asyncio.Event) -> None:
        interval = self.settings.progress_interval_seconds
        while True:
            try:
                await asyncio.wait_for(done.wait(), timeout=interval)
                return
            except TimeoutError:
                pass
            for item in batch:
                try:
                    await item.msg.in_progress()
                except Exception as exc:  # nats errors share no base; never fail the batch
                    log.warning("in-progress ack failed", error=str(exc))
                    return

    async def _dispatch(self, batch: Sequence[Incoming]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(batch)
        pending: list[tuple[int, Pending]] = []
        for index, item in enumerate(batch):
            if isinstance(item.message, DeliveryRequested):
                pending.append((index, Pending(item=item, req=item.message)))
            else:
                kind = type(item.message).__name__
                outcomes[index] = Reject(f"dispatcher does not handle {kind} messages")
        if pending:
            settled = await self._handle([p for _, p in pending])
            for (index, _), outcome in zip(pending, settled, strict=True):
                outcomes[index] = outcome
        return [o if o is not None else Retry("not handled") for o in outcomes]

    async def _handle(self, batch: list[Pending]) -> list[Outcome]:
        if tracing_enabled():
            for p in batch:
                p.span = _consumer_span(p)
        try:
            return await self._handle_batch(batch)
        finally:
            for p in batch:
                if p.span is not None:
                    if p.decision is not None:
                        p.span.set_attribute("cairn.delivery.outcome", p.decision.status)
                        if p.decision.status in ("failed", "dead_lettered", "retrying"):
                            p.span.set_status(Status(StatusCode.ERROR, p.decision.reason))
                    p.span.end()

    async def _handle_batch(self, batch: list[Pending]) -> list[Outcome]:
        mine: list[str] = []
        try:
            return await self._claimed_batch(batch, mine)
        finally:
            for delivery_id in mine:
                self._claims.pop(delivery_id, None)

    async def _claim(self, batch: list[Pending], mine: list[str]) -> list[Pending]:
        """Claim the deliveries of the batch not decided yet; those another replica (or this
        process, in another batch) is sending wait for it. Returns the claimed ones, with
        what the ledger held for each (``Pending.row``); a terminal row is replayed."""
        wanted: list[Pending] = []
        for p in batch:
            if p.req.delivery_id in self._claims:
                p.decision = _busy("this replica is sending it", 1.0)
            else:
                self._claims[p.req.delivery_id] = time.monotonic()
                mine.append(p.req.delivery_id)
                wanted.append(p)
        found = await self._ledger.claim(
            [_claim_request(p) for p in wanted],
            self.settings.replica_id,
            self.settings.claim_seconds,
        )
        claimed: list[Pending] = []
        for p in wanted:
            delivery_id = p.req.delivery_id
            p.row = found.rows.get(delivery_id)
            if (reason := found.refused.get(delivery_id)) is not None:
                log.error("ledger row refused", delivery_id=delivery_id, reason=reason)
                p.decision = _dead(f"its ledger row was refused: {reason}")
                p.unrecordable = True
            elif delivery_id in found.claimed:
                claimed.append(p)
            elif p.row is not None and p.row.status in TERMINAL:
                claimed.append(p)  # replayed, below: nothing is written
            else:
                lapses = found.lapses_in(delivery_id)
                holder = p.row.claimed_by if p.row is not None else None
                p.decision = _busy(
                    f"replica {holder or 'another'} is sending it",
                    1.0 if lapses is None else min(lapses + 0.1, self.settings.claim_seconds),
                )
        return claimed

    async def _claimed_batch(self, batch: list[Pending], mine: list[str]) -> list[Outcome]:
        now = datetime.now(UTC)
        for p in batch:
            if problem := _unstorable_key(p.req):
                p.decision = _dead(f"the request's {problem}")
        await self._lookup.refresh()
        live = await self._claim([p for p in batch if p.decision is None], mine)
        statuses = await self._instances.statuses(list({p.req.instance_id for p in live}))
        replay: list[Pending] = []
        for p in live:
            row = p.row
            if row is not None and row.status in TERMINAL and not _redriven_after(row.status, p):
                p.decision = Decision(
                    status=row.status,
                    settle=ACK,
                    reason=row.reason,
                    provider_message_id=row.provider_message_id,
                )
                p.sent_at, p.held_since = row.sent_at, row.held_since
                replay.append(p)
            elif statuses.get(p.req.instance_id) == "exited":
                p.decision = Decision(status="dropped", settle=ACK, reason="instance exited")
            else:
                self._resolve(p)
        await self._apply_policies([p for p in batch if p.decision is None], now)
        await self._rate_limit([p for p in batch if p.decision is None])
        await self._prepare_jobs([p for p in batch if p.decision is None])
        await self._send_all([p for p in batch if p.decision is None])
        await self._record([p for p in batch if p not in replay and _recorded(p)], now)
        return await self._publish_results(batch, now)

    async def _record(self, batch: list[Pending], now: datetime) -> None:
        """Write what was done. A row refused for good dead-letters only its own message (it was
        handled: never sent again); the database away is waited out, up to
        ``ledger_retry_seconds``, since the sends cannot be undone."""
        entries = [self._entry(p, now) for p in batch]
        suppress = [
            Suppression(
                delivery_id=p.req.delivery_id,
                profile_id=p.req.profile_id,
                channel=_channel(p),
                address=p.address,
                reason=p.suppress,
            )
            for p in batch
            if p.suppress is not None
        ]
        backoff = Backoff(first=0.2, cap=5.0)
        deadline = time.monotonic() + self.settings.ledger_retry_seconds
        while True:
            try:
                refused = await self._ledger.record(entries, suppress)
                break
            except Exception as exc:
                if not is_transient(exc) or time.monotonic() >= deadline:
                    raise
                delay = backoff.next()
                log.warning("ledger write failed: retrying", error=describe(exc), retry_in=delay)
                await asyncio.sleep(delay)
        for p in batch:
            if (reason := refused.get(p.req.delivery_id)) is not None and p.decision is not None:
                log.error("ledger row refused", delivery_id=p.req.delivery_id, reason=reason)
                p.decision = msgspec.structs.replace(
                    p.decision, settle=Reject(f"its ledger row was refused: {reason}")
                )

    def _resolve(self, p: Pending) -> None:
        try:
            p.target = self._lookup.target(p.req)
        except DocumentError as exc:
            p.decision = _dead(str(exc))
            return
        p.address = p.req.address or _address_from(p.req)
        needs_address = p.target.kind == "Channel" and not (
            p.target.type == "webhook" and p.target.setting("url")
        )
        where = p.req.to or "the send's `to`"
        if needs_address and not p.address:
            p.decision = Decision(status="skipped", settle=ACK, reason=f"no address in {where}")
        elif p.address and (problem := string_problem(p.address)):
            p.decision = Decision(
                status="failed", settle=ACK, reason=f"the address from {where} {problem}"
            )

    async def _apply_policies(self, batch: list[Pending], now: datetime) -> None:
        channel_batch = [p for p in batch if p.target is not None and p.target.kind == "Channel"]
        keys = [(p.req.profile_id, _channel(p), p.address) for p in channel_batch]
        suppressed = await self._suppressions.matching(keys)
        capped = [p for p in channel_batch if p.target and p.target.frequency_cap]
        counts = await self._ledger.sent_counts(
            {
                (p.req.profile_id, _channel(p), p.target.frequency_cap.per.total_seconds())
                for p in capped
                if p.target and p.target.frequency_cap
            }
        )
        for p in channel_batch:
            assert p.target is not None
            channel = _channel(p)
            reason = suppressed.get((p.req.profile_id, channel, p.address))
            if reason is None and p.target.marketing:
                reason = consent_refusal(p.req.profile, channel)
            if reason is not None:
                p.decision = Decision(status="suppressed", settle=ACK, reason=reason)
                continue
            cap = p.target.frequency_cap
            if cap is not None:
                key = (p.req.profile_id, channel)
                if counts.get(key, 0) >= cap.limit:
                    p.decision = Decision(
                        status="skipped",
                        settle=ACK,
                        reason=f"frequency cap: {cap.limit} per {cap.per} on {channel}",
                    )
                    continue
                counts[key] = counts.get(key, 0) + 1
            if p.target.quiet_hours is not None:
                until = quiet_until(p.target.quiet_hours, p.req.profile.get("timezone"), now)
                if until is not None:
                    delay = max(1.0, (until - now).total_seconds())
                    p.decision = Decision(
                        status="deferred",
                        settle=Retry("quiet hours", delay=delay),
                        reason=f"quiet hours until {until.isoformat()}",
                    )

    async def _rate_limit(self, batch: list[Pending]) -> None:
        """Give each send under a rate limit its slot of the shared schedule, in batch order
        (the journey's limit and its channel's or destination's, the later slot wins); one
        whose slot is not due yet is deferred until it, never dropped. A delivery deferred
        before keeps the slot it was given."""
        wanted: dict[str, tuple[RateLimit, list[Pending]]] = {}
        limited: list[tuple[Pending, list[tuple[str, RateLimit]], bool]] = []
        for p in batch:
            limits = _limits(p)
            if not limits:
                continue
            row = p.row
            kept = row is not None and row.status == "deferred" and row.slot_at is not None
            if kept:
                assert row is not None
                p.slot_at, p.held_since = row.slot_at, row.held_since
            else:
                for key, limit in limits:
                    wanted.setdefault(key, (limit, []))[1].append(p)
            limited.append((p, limits, not kept))
        if not limited:
            return
        slots, db_now = await self._rates.reserve(
            [(key, limit, len(ps)) for key, (limit, ps) in wanted.items()]
        )
        taken = {key: iter(key_slots) for key, key_slots in slots.items()}
        now = db_now or datetime.now(UTC)
        for p, limits, reserved in limited:
            if reserved:  # the latest of its schedules' slots (a kept slot stays as it is)
                p.slot_at = max(next(taken[key]) for key, _ in limits)
            assert p.slot_at is not None
            wait = (p.slot_at - now).total_seconds()
            if wait <= SLOT_SLACK:
                continue
            p.held_since = p.held_since or now
            what = " and ".join(f"{key} {limit}" for key, limit in limits)
            RATE_LIMITED.labels(p.req.channel or p.req.destination or "").inc()
            p.decision = Decision(
                status="deferred",
                settle=Retry("rate limit", delay=wait),
                reason=f"rate limit: {what}",
            )

    async def _prepare_jobs(self, batch: list[Pending]) -> None:
        for p in batch:
            assert p.target is not None
            try:
                doc = await self._lookup.template(p.req)
                rendered = render(doc, _scope(p.req)) if doc is not None else None
            except (DocumentError, RenderError) as exc:
                p.decision = _dead(f"template {p.req.template!r}: {exc}")
                continue
            except Exception as exc:
                if is_transient(exc):
                    raise  # nothing was sent yet: the whole batch waits for the database
                log.exception("template failed unexpectedly", delivery_id=p.req.delivery_id)
                p.decision = _dead(f"template {p.req.template!r} failed: {describe(exc)}")
                continue
            if rendered is None and p.target.type in ("smtp", "twilio", "fcm", "webpush"):
                p.decision = _dead(f"a {p.target.type} send needs a template")
                continue
            if rendered is not None and rendered.missing:
                log.info(
                    "template variables missing",
                    delivery_id=p.req.delivery_id,
                    missing=list(rendered.missing),
                )
            p.job = Job(request=p.req, target=p.target, address=p.address, rendered=rendered)

    async def _send_all(self, batch: list[Pending]) -> None:
        results = await asyncio.gather(*(self._send(p) for p in batch))
        for p, result in zip(batch, results, strict=True):
            p.decision = self._decide(p, result)

    async def _send(self, p: Pending) -> SendOutcome:
        assert p.job is not None
        assert p.target is not None
        try:
            provider = await self._providers.get(p.target)
            started = time.perf_counter()
            if p.span is None:
                outcome = await provider.send(p.job)
            else:
                with trace.use_span(p.span, end_on_exit=False):
                    outcome = await provider.send(p.job)
            PROVIDER_SECONDS.labels(p.target.type, _result(outcome)).observe(
                time.perf_counter() - started
            )
            if not isinstance(outcome, Failed):
                p.sent_at = datetime.now(UTC)
            return outcome
        except asyncio.CancelledError:
            raise
        except DocumentError as exc:
            return Failed(reason=str(exc), retryable=False)
        except Exception as exc:
            log.exception("provider failed unexpectedly", delivery_id=p.req.delivery_id)
            return Failed(reason=f"{type(exc).__name__}: {exc}", retryable=True)

    def _decide(self, p: Pending, result: SendOutcome) -> Decision:
        if not isinstance(result, Failed):
            return Decision(
                status="sent", settle=ACK, provider_message_id=result.provider_message_id
            )
        if result.bounced:
            p.suppress = "bounced"
            return Decision(status="bounced", settle=ACK, reason=result.reason)
        if result.unsubscribed:
            p.suppress = "unsubscribed"
            return Decision(status="suppressed", settle=ACK, reason=result.reason)
        if not result.retryable:
            return Decision(status="failed", settle=ACK, reason=result.reason)
        attempts = p.item.deliveries
        if attempts >= self.settings.max_attempts:
            return _dead(f"gave up after {attempts} attempts: {result.reason}")
        return Decision(
            status="retrying",
            settle=Retry(result.reason, delay=self.retry_delay(attempts, result.retry_after)),
            reason=result.reason,
        )

    def retry_delay(self, attempt: int, retry_after: float | None) -> float:
        s = self.settings
        backoff = min(s.retry_max_seconds, s.retry_base_seconds * 2 ** (attempt - 1))
        jittered = backoff * random.uniform(0.5, 1.5)
        return float(min(s.retry_max_seconds, max(jittered, retry_after or 0.0)))

    def _entry(self, p: Pending, now: datetime) -> LedgerEntry:
        assert p.decision is not None
        return LedgerEntry(
            **_key(p.req),
            address=p.address,
            status=p.decision.status,
            reason=p.decision.reason,
            provider_message_id=p.decision.provider_message_id,
            attempts=p.item.deliveries if p.job is not None else 0,
            sent_at=(p.sent_at or now) if p.decision.status == "sent" else None,
            slot_at=p.slot_at,
            held_since=p.held_since,
            redriven=REDRIVE_HEADER in p.item.headers,
        )

    async def _publish_results(self, batch: list[Pending], now: datetime) -> list[Outcome]:
        reporting: list[tuple[Pending, DeliveryResult]] = []
        for p in batch:
            decision = p.decision
            assert decision is not None
            target = p.req.channel or p.req.destination or ""
            DELIVERIES.labels(target, decision.status).inc()
            if decision.status == "sent" and p.job is not None:  # not a replay
                sent_at = datetime.now(UTC)
                REQUEST_TO_SENT.labels(target).observe(
                    max(0.0, (sent_at - p.req.requested_at).total_seconds())
                )
                if (held := _held_for(p)) is not None:
                    RATE_LIMIT_HELD.labels(target).observe(held)
            if decision.status != "sent":
                log.info(
                    "delivery " + decision.status,
                    delivery_id=p.req.delivery_id,
                    reason=decision.reason,
                    **_trace_ids(p),
                )
            if decision.status not in ("retrying", "sending"):
                reporting.append((p, self._result(p, decision, now)))
        stored = await self._results.publish(
            [result for _, result in reporting], [_trace_headers(p) for p, _ in reporting]
        )
        failed = {id(p) for (p, _), ok in zip(reporting, stored, strict=True) if not ok}
        outcomes: list[Outcome] = []
        for p in batch:
            assert p.decision is not None
            if id(p) in failed:
                outcomes.append(Retry("publishing the delivery result was not acknowledged"))
            else:
                outcomes.append(p.decision.settle)
        return outcomes

    def _result(self, p: Pending, decision: Decision, now: datetime) -> DeliveryResult:
        req = p.req
        partition, _ = self._results.subject(req.profile_id)
        return DeliveryResult(
            delivery_id=req.delivery_id,
            profile_id=req.profile_id,
            partition=partition,
            instance_id=req.instance_id,
            step_id=req.step_id,
            outcome=decision.status,  # type: ignore[arg-type]
            at=(p.sent_at or now) if decision.status == "sent" else now,
            channel=req.channel,
            destination=req.destination,
            reason=decision.reason,
            provider_message_id=decision.provider_message_id,
            attempts=max(1, p.item.deliveries),
            held_for=_held_for(p) if decision.status == "sent" else None,
        )


def _limits(p: Pending) -> list[tuple[str, RateLimit]]:
    """The rate limits a send is under, by schedule key: its journey's, its target's."""
    limits: list[tuple[str, RateLimit]] = []
    if p.req.rate_limit is not None:
        limits.append((f"journey:{p.req.journey}", p.req.rate_limit))
    if p.target is not None and p.target.rate_limit is not None:
        limits.append((f"{p.target.kind.lower()}:{p.target.name}", p.target.rate_limit))
    return limits


def _held_for(p: Pending) -> float | None:
    """Seconds a rate limit held the message back (from when it first did to the sending)."""
    if p.held_since is None or p.sent_at is None:
        return None
    return max(0.0, (p.sent_at - p.held_since).total_seconds())


def _result(outcome: SendOutcome) -> str:
    if not isinstance(outcome, Failed):
        return "sent"
    if outcome.bounced:
        return "bounced"
    return "retryable" if outcome.retryable else "failed"


def _consumer_span(p: Pending) -> Span:
    return tracer.start_span(
        f"process {p.item.subject}",
        context=propagate.extract(p.item.headers),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "nats",
            "messaging.destination.name": p.item.subject,
            "messaging.operation.type": "process",
            "messaging.consumer.group.name": "dispatcher",
            "messaging.message.id": p.item.headers.get(MSG_ID, p.req.delivery_id),
            "cairn.delivery.id": p.req.delivery_id,
            "cairn.journey": p.req.journey,
            "cairn.step_id": p.req.step_id,
        },
    )


def _trace_ids(p: Pending) -> dict[str, str]:
    """The delivery's trace for its log line (it is logged outside the span)."""
    if p.span is None:  # tracing off: the trace the request came with, if any
        parts = p.item.headers.get("traceparent", "").split("-")
        return {"trace_id": parts[1]} if len(parts) == 4 else {}
    ctx = p.span.get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


def _trace_headers(p: Pending) -> dict[str, str]:
    """The result continues the delivery's trace back into the profile's partition."""
    headers: dict[str, str] = {}
    if p.span is not None:
        propagate.inject(headers, context=trace.set_span_in_context(p.span))
    elif traceparent := p.item.headers.get("traceparent"):
        headers["traceparent"] = traceparent
    return headers


def _unstorable_key(req: DeliveryRequested) -> str | None:
    """The first id of the request that no query could carry (only a forged request has one:
    ingest refuses such values at the edge)."""
    for name in LedgerKey.__struct_fields__:  # its ids; the version is checked below
        value = getattr(req, name)
        if isinstance(value, str) and (problem := string_problem(value)):
            return f"{name} {problem}"
    if not -(2**31) <= req.version < 2**31:
        return f"version {req.version} is out of range"
    return None


def _redriven_after(status: str, p: Pending) -> bool:
    """A re-driven copy of a dead-lettered delivery is a new try, not a replay."""
    return status == "dead_lettered" and REDRIVE_HEADER in p.item.headers


def _busy(why: str, delay: float) -> Decision:
    """Another holder of the delivery's claim is sending it: wait for its outcome."""
    return Decision(status="sending", settle=Retry(why, delay=delay), reason=why)


def _recorded(p: Pending) -> bool:
    """Whether the batch writes the delivery's ledger row: not when another holder of its claim
    is sending it, nor when the database refused even the claim."""
    waits = p.decision is not None and p.decision.status == "sending"
    return not (waits or p.unrecordable)


def _key(req: DeliveryRequested) -> dict[str, Any]:
    """The request's ledger row name (``LedgerKey``'s fields), for a claim or an outcome."""
    return {name: getattr(req, name) for name in LedgerKey.__struct_fields__}


def _claim_request(p: Pending) -> ClaimRequest:
    return ClaimRequest(**_key(p.req), redriven=REDRIVE_HEADER in p.item.headers)


def _dead(reason: str) -> Decision:
    return Decision(status="dead_lettered", settle=Reject(reason), reason=reason)


def _channel(p: Pending) -> str:
    return p.req.channel or (p.target.name if p.target else "")


def _address_from(req: DeliveryRequested) -> str | None:
    """Resolve ``to`` (profile.email, event.properties.phone...) when the matcher did not."""
    if not req.to:
        return None
    root, _, path = req.to.partition(".")
    value: Any = {"profile": req.profile, "event": req.event}.get(root)
    for part in path.split(".") if path else []:
        value = value.get(part) if isinstance(value, dict) else None
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


def _scope(req: DeliveryRequested) -> dict[str, Any]:
    return {
        "profile": req.profile,
        "event": {**req.event, "matched": req.matched_events},
        "steps": {step: {"event": event} for step, event in req.matched_events.items()},
        "journey": {
            "name": req.journey,
            "version": req.version,
            "step": req.step_id,
            "instance_id": req.instance_id,
            "delivery_id": req.delivery_id,
            "unique_value": req.unique_value,
        },
    }
