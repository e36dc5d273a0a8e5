"""Consumer lag on /metrics: each service samples the JetStream consumers it reads from.

``cairn_consumer_pending_messages`` is what the stream holds that the consumer has not been
given yet (``num_pending``): the backlog KEDA scales on and the first graph to look at when
journeys run late. ``cairn_consumer_ack_pending_messages`` is what it was given and has not
acknowledged yet (``num_ack_pending``): work in flight, or stuck.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping

import structlog
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import Gauge

from cairn_common.waiting import wait_any

log = structlog.get_logger(__name__)

CONSUMER_PENDING = Gauge(
    "cairn_consumer_pending_messages",
    "Messages in the stream not yet delivered to the consumer (its lag), sampled",
    ["stream", "consumer"],
)
CONSUMER_ACK_PENDING = Gauge(
    "cairn_consumer_ack_pending_messages",
    "Messages delivered to the consumer and not acknowledged yet, sampled",
    ["stream", "consumer"],
)

Consumers = Callable[[], Mapping[str, str]]
"""Returns the consumers to sample now: metric label -> durable name."""


async def sample_once(
    js: JetStreamContext, stream: str, consumers: Mapping[str, str], shown: set[str]
) -> set[str]:
    """Refresh the gauges of ``consumers``; drop those of consumers no longer read here.
    Returns the labels shown now."""
    now: set[str] = set()
    for label, durable in consumers.items():
        try:
            info = await js.consumer_info(stream, durable)
        except NotFoundError:
            continue
        CONSUMER_PENDING.labels(stream, label).set(info.num_pending or 0)
        CONSUMER_ACK_PENDING.labels(stream, label).set(info.num_ack_pending or 0)
        now.add(label)
    for label in shown - now:
        for gauge in (CONSUMER_PENDING, CONSUMER_ACK_PENDING):
            with contextlib.suppress(KeyError):
                gauge.remove(stream, label)
    return now


async def sample_consumer_lag(
    js: JetStreamContext,
    stream: str,
    consumers: Consumers,
    stop: asyncio.Event,
    *,
    interval: float,
) -> None:
    """Sample until ``stop``; NATS being away only pauses the figures, and no failure here ever
    stops the service."""
    shown: set[str] = set()
    while not stop.is_set():
        try:
            shown = await sample_once(js, stream, consumers(), shown)
        except (NatsError, OSError, TimeoutError) as exc:
            log.debug("consumer lag not sampled", error=repr(exc))
        except Exception:  # a gauge must never take its service down
            log.exception("consumer lag sampling failed")
        await wait_any(stop, timeout=interval)
