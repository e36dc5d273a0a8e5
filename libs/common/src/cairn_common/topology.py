"""Every JetStream stream and durable consumer Cairn uses, declared in one place.

Names are derived from a namespace (``CAIRN_NAMESPACE``, default ``cairn``) so several deployments,
or several tests, can share one NATS server without seeing each other.

Subjects:

- ``{ns}.ingest.>``                  NATS ingestion (request/reply; core NATS, not a stream)
- ``{ns}.inputs.{partition}.{kind}`` everything a profile's actor handles, in arrival order:
                                     ``event``, ``timer`` (fired), ``result`` (delivery result)
- ``{ns}.deliveries.{channel}``      delivery requests from the matcher's outbox (work queue)
- ``{ns}.dlq.{stream}``              messages a consumer gave up on, with the reason
- ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}``
                                     JetStream's notice that it stopped redelivering a message no
                                     consumer settled (kept in the give-ups stream, see
                                     ``cairn_common.give_ups``)

Every stream is bounded in bytes (``CAIRN_INPUTS_MAX_BYTES`` and friends). The inputs and the
deliveries refuse new messages when full (discard ``new``), so nothing accepted is ever dropped
to make room: ingest answers 503 and Segment clients retry, the matcher's outbox and the
scheduler wait. Neither has an age limit. The matcher trims each partition's inputs below its
committed sequence (PostgreSQL holds them from then on), so the inputs' bound is a bound on the
backlog, not on history. The dead letters keep the newest: discard ``old``, 30 days at most.
"""

from __future__ import annotations

from datetime import timedelta

import msgspec

InputKind = str  # "event" | "timer" | "result"


DISPATCHER_ACK_WAIT = timedelta(seconds=3)
"""The dispatcher consumer's ack wait; its in-progress acks come well inside it."""


class StreamSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    subjects: tuple[str, ...]
    retention: str  # "limits" | "workqueue"
    duplicate_window: timedelta
    max_age: timedelta | None
    """``None``: no age limit."""
    max_bytes: int
    discard: str  # "new": refuse publishes when full | "old": drop the oldest
    description: str


MIB = 1 << 20
DEFAULT_INPUTS_MAX_BYTES = 1024 * MIB
DEFAULT_DELIVERIES_MAX_BYTES = 256 * MIB
DEFAULT_DEAD_LETTERS_MAX_BYTES = 256 * MIB
GIVE_UPS_MAX_BYTES = 16 * MIB
"""Max-deliveries advisories are a few hundred bytes each; they wait here only until handled."""


class ConsumerSpec(msgspec.Struct, frozen=True, kw_only=True):
    stream: str
    durable: str
    filter_subject: str | None
    max_deliver: int
    ack_wait: timedelta
    """How long a delivered, unacknowledged message waits before JetStream redelivers it."""
    backoff: tuple[timedelta, ...]
    """Delays for ``nak`` by delivery count, applied by the consume loop (not by the server)."""
    max_ack_pending: int = 10_000
    description: str = ""


class Topology(msgspec.Struct, frozen=True):
    namespace: str = "cairn"
    inputs_max_bytes: int = DEFAULT_INPUTS_MAX_BYTES
    deliveries_max_bytes: int = DEFAULT_DELIVERIES_MAX_BYTES
    dead_letters_max_bytes: int = DEFAULT_DEAD_LETTERS_MAX_BYTES

    # ---- streams -------------------------------------------------------------------------------
    @property
    def inputs_stream(self) -> str:
        return f"{self._upper}_INPUTS"

    @property
    def deliveries_stream(self) -> str:
        return f"{self._upper}_DELIVERIES"

    @property
    def dead_letter_stream(self) -> str:
        return f"{self._upper}_DEAD_LETTERS"

    @property
    def give_ups_stream(self) -> str:
        return f"{self._upper}_GIVE_UPS"

    # ---- subjects ------------------------------------------------------------------------------
    def input_subject(self, partition: int, kind: InputKind) -> str:
        return f"{self.namespace}.inputs.{partition}.{kind}"

    def partition_filter(self, partition: int) -> str:
        return f"{self.namespace}.inputs.{partition}.>"

    def delivery_subject(self, channel: str) -> str:
        return f"{self.namespace}.deliveries.{channel}"

    def dead_letter_subject(self, stream: str) -> str:
        return f"{self.namespace}.dlq.{stream}"

    @property
    def ingest_subjects(self) -> str:
        return f"{self.namespace}.ingest.>"

    # ---- consumers -----------------------------------------------------------------------------
    @property
    def dispatcher_consumer(self) -> str:
        return "dispatcher"

    @property
    def give_ups_consumer(self) -> str:
        return "give-ups"

    def _delivering(self) -> list[ConsumerSpec]:
        """The consumers with a delivery limit, whose give-ups are dead-lettered."""
        return [c for c in self.consumers() if c.stream != self.give_ups_stream]

    def streams(self) -> list[StreamSpec]:
        ns = self.namespace
        return [
            StreamSpec(
                name=self.inputs_stream,
                subjects=(f"{ns}.inputs.>",),
                retention="limits",
                duplicate_window=timedelta(minutes=10),
                max_age=None,
                max_bytes=self.inputs_max_bytes,
                discard="new",
                description="Events, fired timers and delivery results, partitioned by profile",
            ),
            StreamSpec(
                name=self.deliveries_stream,
                subjects=(f"{ns}.deliveries.>",),
                retention="workqueue",
                duplicate_window=timedelta(minutes=10),
                max_age=None,
                max_bytes=self.deliveries_max_bytes,
                discard="new",
                description="Delivery requests from the matcher's outbox, one work queue",
            ),
            StreamSpec(
                name=self.dead_letter_stream,
                subjects=(f"{ns}.dlq.>",),
                retention="limits",
                duplicate_window=timedelta(minutes=2),
                max_age=timedelta(days=30),
                max_bytes=self.dead_letters_max_bytes,
                discard="old",
                description="Messages consumers gave up on, with the reason",
            ),
            StreamSpec(
                name=self.give_ups_stream,
                subjects=tuple(
                    f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{c.stream}.{c.durable}"
                    for c in self._delivering()
                ),
                retention="workqueue",
                duplicate_window=timedelta(minutes=2),
                max_age=timedelta(days=7),
                max_bytes=GIVE_UPS_MAX_BYTES,
                discard="old",
                description="JetStream's notices of messages it stopped delivering unsettled",
            ),
        ]

    def consumer(self, durable: str) -> ConsumerSpec:
        return next(c for c in self.consumers() if c.durable == durable)

    def consumers(self) -> list[ConsumerSpec]:
        """The shared durable consumers. The matcher makes its own per partition and epoch
        (``matcher-{p}-e{epoch}``, see cairn_matcher.partitions), so it has none here."""
        backoff = (
            timedelta(seconds=1),
            timedelta(seconds=5),
            timedelta(seconds=30),
            timedelta(minutes=2),
        )
        return [
            ConsumerSpec(
                stream=self.deliveries_stream,
                durable=self.dispatcher_consumer,
                filter_subject=None,
                max_deliver=10,
                # Short, because a batch in flight is kept alive with +WPI every
                # CAIRN_PROGRESS_INTERVAL_SECONDS: what a killed dispatcher had fetched is
                # redelivered within 3 s, not a minute later (when a later step's send, queued
                # meanwhile, would reach the customer first).
                ack_wait=DISPATCHER_ACK_WAIT,
                backoff=backoff,
                description="Shared by all dispatcher replicas",
            ),
            ConsumerSpec(
                stream=self.give_ups_stream,
                durable=self.give_ups_consumer,
                filter_subject=None,
                max_deliver=1000,  # a notice is retried (with backoff) until it is handled
                ack_wait=timedelta(seconds=30),
                backoff=backoff,
                description="Dead-letters what JetStream stopped delivering unsettled",
            ),
        ]

    @property
    def _upper(self) -> str:
        return self.namespace.upper().replace("-", "_")
