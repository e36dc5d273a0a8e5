"""NATS ingestion: request/reply on ``{ns}.ingest.{track|identify|page|screen|group|alias|batch}``
and ``{ns}.ingest.cloudevents``, answered with the same JSON the HTTP API returns.

The write key travels in the ``Cairn-Write-Key`` header, an ``Authorization: Basic`` header, or as
``writeKey`` in the body. The reply's ``Cairn-Status`` header carries the HTTP status code. All
replicas share the subjects through the ``ingest`` queue group.
"""

from __future__ import annotations

import asyncio
import base64
import binascii

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from cairn_common.observability import consumer_span, tracing_enabled
from cairn_common.topology import Topology
from cairn_ingest.intake import SINGLE_TYPES, Ingestor, Reply, error

log = structlog.get_logger(__name__)
QUEUE = "ingest"
STATUS_HEADER = "Cairn-Status"
KEY_HEADER = "Cairn-Write-Key"


def _write_key(msg: Msg) -> str | None:
    headers = msg.headers or {}
    if key := headers.get(KEY_HEADER):
        return key
    scheme, _, value = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic" and value:
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[0]
        except (binascii.Error, ValueError):
            return None
    return None


async def handle(ingestor: Ingestor, msg: Msg, prefix: str) -> Reply:
    kind = msg.subject.removeprefix(prefix)
    key = _write_key(msg)
    if kind == "batch":
        return await ingestor.segment(None, msg.data, key, "nats")
    if kind in SINGLE_TYPES:
        return await ingestor.segment(kind, msg.data, key, "nats")
    if kind == "cloudevents":
        headers = dict(msg.headers or {})
        content_type = headers.get("Content-Type", "application/cloudevents+json")
        return await ingestor.cloudevents(msg.data, headers, content_type, key)
    return error(404, "not_found", f"no such subject: {msg.subject}")


async def _traced(ingestor: Ingestor, msg: Msg, prefix: str) -> Reply:
    """A CONSUMER span continuing the requester's ``traceparent``, so events ingested over NATS
    start their trace there as HTTP ones do at the request."""
    if not tracing_enabled():
        return await handle(ingestor, msg, prefix)
    attributes = {
        "messaging.system": "nats",
        "messaging.destination.name": msg.subject,
        "messaging.operation.type": "process",
        "messaging.consumer.group.name": QUEUE,
    }
    with consumer_span(f"process {msg.subject}", msg.headers, attributes) as span:
        reply = await handle(ingestor, msg, prefix)
        span.set_attribute("cairn.ingest.status", reply.status)
        return reply


async def serve(
    nc: NATS,
    topology: Topology,
    ingestor: Ingestor,
    stop: asyncio.Event,
    subscribed: asyncio.Event,
    concurrency: int = 64,
) -> None:
    """Answer requests until ``stop``; requests in flight are finished and answered.
    ``subscribed`` is set once requests can arrive (readiness waits for it)."""
    prefix = topology.ingest_subjects.removesuffix(">")
    sub = await nc.subscribe(topology.ingest_subjects, queue=QUEUE)
    await nc.flush()
    subscribed.set()
    slots = asyncio.Semaphore(concurrency)

    async def answer(msg: Msg) -> None:
        try:
            try:
                reply = await _traced(ingestor, msg, prefix)
            except Exception:  # a bug must not take the listener down; the client gets a 500
                log.exception("nats ingestion failed", subject=msg.subject)
                reply = error(500, "internal", "internal error; the events were not accepted")
            if msg.reply:
                headers = {**reply.headers, STATUS_HEADER: str(reply.status)}
                await nc.publish(msg.reply, reply.body, headers=headers)
        finally:
            slots.release()

    log.info("nats ingestion listening", subject=topology.ingest_subjects, queue=QUEUE)
    async with asyncio.TaskGroup() as tg:
        stopped = tg.create_task(stop.wait())
        while not stop.is_set():
            await slots.acquire()
            nxt = asyncio.ensure_future(sub.next_msg(timeout=None))
            await asyncio.wait({nxt, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not nxt.done():
                nxt.cancel()
                slots.release()
                break
            tg.create_task(answer(nxt.result()))
        await sub.unsubscribe()
