"""The NATS JetStream bus: connect, provision the topology, publish with dedupe and tracing."""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from typing import Any

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from cairn_common.messages import Message, encode
from cairn_common.topology import ConsumerSpec, StreamSpec, Topology

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("cairn.bus")

MSG_ID = "Nats-Msg-Id"
REDRIVE_HEADER = "Cairn-Redrive"
"""Set on a message re-driven from the dead letters: the id of the dead letter it came from. A
consumer that recorded the original as dead-lettered takes the re-driven copy as a new try."""


async def connect(
    url: str,
    *,
    name: str,
    user: str = "",
    password: str = "",
    inbox_prefix: str = "_INBOX",
    ca_file: str = "",
) -> NATS:
    """Connect with endless reconnects: a NATS restart must not kill a service, only pause it.

    ``url`` may name several servers of one cluster, comma-separated: the client starts with
    whichever answers and moves to another when its server goes away (it also learns the
    cluster's other members from the server).

    ``user``/``password`` authenticate (``cairn_common.nats_auth``); replies arrive under
    ``inbox_prefix``, the one inbox subject space that user may subscribe to. With ``ca_file`` or
    a ``tls://`` URL the connection is TLS, the server's certificate verified against
    ``ca_file`` (else the system's CAs) and its name checked: credentials never cross the wire in
    clear text."""

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    async def on_error(exc: Exception) -> None:
        log.warning("nats error", error=str(exc))

    servers = [u.strip() for u in url.split(",") if u.strip()]
    return await nats.connect(
        servers=servers,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
        user=user or None,
        password=password or None,
        inbox_prefix=inbox_prefix,
        tls=tls_context(servers[0], ca_file),
    )


def tls_context(url: str, ca_file: str = "") -> ssl.SSLContext | None:
    """The TLS context of a NATS connection, or ``None`` for a plain one."""
    if not ca_file and not url.startswith("tls://"):
        return None
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _stream_config(spec: StreamSpec, replicas: int) -> api.StreamConfig:
    return api.StreamConfig(
        name=spec.name,
        description=spec.description,
        subjects=list(spec.subjects),
        retention=api.RetentionPolicy(spec.retention),
        storage=api.StorageType.FILE,
        duplicate_window=spec.duplicate_window.total_seconds(),
        max_age=spec.max_age.total_seconds() if spec.max_age else 0,
        max_bytes=spec.max_bytes,
        discard=api.DiscardPolicy(spec.discard),
        num_replicas=replicas,
    )


def _consumer_config(spec: ConsumerSpec) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        durable_name=spec.durable,
        description=spec.description,
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=spec.ack_wait.total_seconds(),
        max_deliver=spec.max_deliver,
        # spec.backoff is the ladder of nak delays our consume loop applies. It is deliberately not
        # given to the server: with a BackOff list, JetStream takes its first step as the ack wait
        # (1 s), and every batch that runs longer would be redelivered while still in flight.
        filter_subject=spec.filter_subject,
        max_ack_pending=spec.max_ack_pending,
    )


async def provision(
    js: JetStreamContext,
    streams: Sequence[StreamSpec],
    consumers: Sequence[ConsumerSpec] = (),
    *,
    replicas: int = 1,
) -> None:
    """Create or update streams and durable consumers. Safe to run from every replica at once.

    ``replicas`` is each stream's JetStream replica count (its consumers follow it); raising it
    on an existing stream scales the stream up in place.
    """
    for spec in streams:
        config = _stream_config(spec, replicas)
        try:
            await js.stream_info(spec.name)
        except NotFoundError:
            try:
                await js.add_stream(config)
                log.info("stream created", stream=spec.name)
                continue
            except nats.js.errors.BadRequestError:
                pass  # another replica created it between our look and our add
        await js.update_stream(config)
    for cspec in consumers:
        await js.add_consumer(cspec.stream, _consumer_config(cspec))


async def provision_topology(
    js: JetStreamContext, topology: Topology, *, replicas: int = 1
) -> None:
    await provision(js, topology.streams(), topology.consumers(), replicas=replicas)


def trace_headers(headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """Headers with the current W3C trace context injected."""
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier)
    return carrier


async def publish(
    js: JetStreamContext,
    subject: str,
    message: Message,
    *,
    msg_id: str,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> api.PubAck:
    """Publish one message and wait for JetStream's acknowledgement.

    ``msg_id`` becomes ``Nats-Msg-Id`` so a retried publish inside the stream's duplicate window is
    stored once (``PubAck.duplicate`` is then true).
    """
    with tracer.start_as_current_span(
        f"send {subject}",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "nats",
            "messaging.destination.name": subject,
            "messaging.operation.type": "send",
            "messaging.message.id": msg_id,
        },
    ):
        hdrs = trace_headers(headers)
        hdrs[MSG_ID] = msg_id
        return await js.publish(subject, encode(message), timeout=timeout, headers=hdrs)


def span_links_from(headers: Mapping[str, Any] | None) -> Any:
    """The trace context carried in ``headers`` (for a consumer span's parent)."""
    return propagate.extract(dict(headers or {}))
