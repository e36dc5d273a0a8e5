"""What one batch of inputs changes, gathered in memory and written in one transaction.

The interpreter returns effects per input; ``BatchWrites`` folds them into one set of rows per
table (a timer set and cancelled inside the same batch is never written, the last state of a
profile is the one saved) and ``commit`` writes them with one statement per table.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from cairn_common.messages import (
    DeadLetter,
    DeliveryRequested,
    DeliveryResult,
    Event,
    Message,
    encode,
)
from cairn_common.topology import Topology
from cairn_journey.effects import (
    Counted,
    Effect,
    InstanceConverted,
    InstanceEnded,
    InstanceStarted,
    SendRequested,
    TimerCancelled,
    TimerSet,
    TraitsUpdated,
)
from cairn_journey.state import ProfileState, encode_state
from cairn_matcher import repo

log = structlog.get_logger(__name__)


class BatchWrites:
    def __init__(
        self,
        topology: Topology,
        now: datetime,
        *,
        notify_within: float,
        traits_budget: int = 65_536,
        shard: int = 0,
    ) -> None:
        self._topology = topology
        self._shard = shard
        self._traits_budget = traits_budget
        self._now = now
        self._hour = now.replace(minute=0, second=0, microsecond=0)
        self._notify_before = now + timedelta(seconds=notify_within)
        self.states: dict[str, ProfileState] = {}
        self.encoded: dict[str, bytes] = {}
        """The states as ``commit`` saved them (the engine caches these)."""
        self.partition_of: dict[str, int] = {}
        self.applied: dict[int, int] = {}
        """partition -> the last stream sequence this batch applied there."""
        self.traits: dict[str, dict[str, Any]] = {}
        self.unset: dict[str, set[str]] = {}
        """Traits to remove per profile (never also in ``traits``: the later change wins)."""
        self.timers: dict[str, repo.TimerRow] = {}
        self.cancelled: set[str] = set()
        self.outbox: list[repo.OutboxRow] = []
        self.started: list[repo.InstanceStart] = []
        self.ended: list[repo.InstanceEnd] = []
        self.converted: list[tuple[str, datetime]] = []
        self.stats: dict[repo.StatKey, int] = {}
        self.delivery_events: dict[tuple[str, str], repo.DeliveryEventRow] = {}
        self.send_latencies: list[float] = []
        """Seconds from an event's received_at to now, for each event that requested a send."""

    @property
    def dirty_profiles(self) -> set[str]:
        return set(self.states)

    def merge_traits(self, profile_id: str, traits: dict[str, Any]) -> None:
        self.traits[profile_id] = {**self.traits.get(profile_id, {}), **traits}
        unset = self.unset.get(profile_id)
        if unset:
            unset.difference_update(traits)

    def unset_traits(self, profile_id: str, names: tuple[str, ...]) -> None:
        """Remove traits (an ``update`` step's ``unset``); a later merge in the batch wins."""
        pending = self.traits.get(profile_id)
        for name in names:
            if pending is not None:
                pending.pop(name, None)
            self.unset.setdefault(profile_id, set()).add(name)

    def add(
        self,
        profile_id: str,
        partition: int,
        state: ProfileState,
        effects: list[Effect],
        *,
        traceparent: str | None = None,
    ) -> None:
        """``traceparent``: the context of the input's span, kept with the outbox and timer rows
        it causes so their messages continue (or link to) its trace."""
        self.states[profile_id] = state
        self.partition_of[profile_id] = partition
        for effect in effects:
            self._fold(profile_id, partition, effect, traceparent)

    def record_delivery_event(self, message: Message) -> None:
        """A delivery's outcome or a tracking hit (open, click, unsubscribe), for analytics."""
        row = delivery_event_row(message)
        if row is not None:
            self.delivery_events.setdefault((row[0], row[1]), row)

    def _fold(
        self, profile_id: str, partition: int, effect: Effect, traceparent: str | None
    ) -> None:
        match effect:
            case InstanceStarted():
                self.started.append(
                    (effect.instance_id, effect.journey, effect.version, profile_id,
                     effect.unique_value, effect.started_at)
                )  # fmt: skip
            case InstanceEnded():
                ended_at = effect.ended_at or self._now
                self.ended.append((effect.instance_id, effect.status, effect.reason, ended_at))
            case InstanceConverted():
                self.converted.append((effect.instance_id, effect.converted_at or self._now))
            case TimerSet():
                self.timers[effect.timer_id] = (
                    effect.timer_id, profile_id, partition, effect.instance_id,
                    effect.step_id, effect.kind, effect.due_at, traceparent,
                )  # fmt: skip
            case TimerCancelled():
                if self.timers.pop(effect.timer_id, None) is None:
                    self.cancelled.add(effect.timer_id)
            case SendRequested():
                self.outbox.append(self._delivery(effect.delivery, traceparent))
            case TraitsUpdated():
                if effect.set:
                    self.merge_traits(profile_id, effect.set)
                if effect.unset:
                    self.unset_traits(profile_id, effect.unset)
            case Counted():
                key = (effect.journey, effect.version, effect.step_id, effect.counter, self._hour)
                self.stats[key] = self.stats.get(key, 0) + effect.amount

    def _delivery(self, delivery: DeliveryRequested, traceparent: str | None) -> repo.OutboxRow:
        target = delivery.channel or delivery.destination or "unknown"
        subject = self._topology.delivery_subject(target)
        return (subject, delivery.delivery_id, encode(delivery), traceparent)

    def dead_letter(self, letter: DeadLetter, msg_id: str, traceparent: str | None = None) -> None:
        """Committed with the batch, so a poison input is reported exactly once."""
        subject = self._topology.dead_letter_subject(letter.stream)
        self.outbox.append((subject, msg_id, encode(letter), traceparent))

    async def commit(self, conn: Any) -> list[tuple[int, str, str, bytes, str | None]]:
        """Write everything (inside the caller's transaction); returns the new outbox rows.

        The statements run in this fixed order, after ``fence_many`` locked the lease rows, and
        each takes its rows in key order (``repo._columns``): concurrent committers sharing rows
        (``journey_stats``, when two replicas' committers meet in one shard) then always lock
        them in one order and never deadlock. The common rows go in one statement
        (``repo.write_batch``), so a commit costs a few round trips, not one per table."""
        self.encoded = {p: encode_state(s) for p, s in self.states.items()}
        rows = await repo.write_batch(
            conn,
            repo.BatchRows(
                states=[(p, self.partition_of[p], blob) for p, blob in self.encoded.items()],
                started=self.started,
                timers=list(self.timers.values()),
                applied=self.applied,
                outbox=self.outbox,
                stats=self.stats,
            ),
            shard=self._shard,
        )
        await repo.merge_traits(conn, self.traits, budget=self._traits_budget)
        await repo.unset_traits(conn, self.unset)
        await repo.end_instances(conn, self.ended)  # after write_batch: it may have started them
        await repo.convert_instances(conn, self.converted)
        await repo.delete_timers(conn, sorted(self.cancelled))
        if self.timers:
            earliest = min(row[6] for row in self.timers.values())
            if earliest <= self._notify_before:
                await repo.wake_scheduler(conn, earliest.astimezone(UTC))
        # Last: delivery counters go to journey_stats too.
        await repo.add_delivery_events(conn, list(self.delivery_events.values()), shard=self._shard)
        return rows


TRACKING_KINDS = {
    "Email Opened": "opened",
    "Email Link Clicked": "clicked",
    "Unsubscribed": "unsubscribed",
}


def delivery_event_row(message: Message) -> repo.DeliveryEventRow | None:
    """The analytics row for a delivery result or a tracking event; ``None`` for anything else
    (including a tracking event that does not name its delivery, instance and step)."""
    if isinstance(message, DeliveryResult):
        held = round(message.held_for * 1000) if message.held_for is not None else None
        return (
            message.delivery_id, message.outcome, message.instance_id, message.step_id,
            message.channel or message.destination, message.reason, message.at,
            held if message.outcome == "sent" else None,
        )  # fmt: skip
    if isinstance(message, Event) and message.type == "track" and message.event in TRACKING_KINDS:
        props = message.properties
        ids = [props.get(k) for k in ("delivery_id", "instance_id", "step_id")]
        if not all(isinstance(v, str) and v for v in ids):
            return None
        channel = props.get("channel")
        return (
            str(ids[0]), TRACKING_KINDS[message.event], str(ids[1]), str(ids[2]),
            channel if isinstance(channel, str) else None, None, message.received_at, None,
        )  # fmt: skip
    return None
