"""Publish many messages at once: every publish goes out before the first acknowledgement is
awaited (``publish_async``), so a batch costs about one round trip instead of one per message.

Used by the hot paths that emit in bulk: the matcher's outbox relay and the scheduler's fires.
Each message carries ``Nats-Msg-Id``, so a batch retried after a partial failure (or a crash) is
stored once by JetStream inside its duplicate window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec
from nats.js import api
from nats.js.client import JetStreamContext

from cairn_common.bus import MSG_ID, trace_headers


class Outgoing(msgspec.Struct, frozen=True):
    subject: str
    payload: bytes
    msg_id: str


class PublishFailed(Exception):
    """At least one message of a batch was not acknowledged; the batch may be retried whole."""


async def publish_batch(
    js: JetStreamContext, messages: Sequence[Outgoing], *, timeout: float = 10.0
) -> list[api.PubAck]:
    """Publish every message and wait for all acknowledgements (in the order given).

    Raises ``PublishFailed`` naming the first failure if any message was refused or timed out.
    """
    if not messages:
        return []
    futures: list[asyncio.Future[api.PubAck]] = []
    base = trace_headers()
    try:
        for m in messages:
            headers = {**base, MSG_ID: m.msg_id}
            futures.append(await js.publish_async(m.subject, m.payload, headers=headers))
        async with asyncio.timeout(timeout):
            results = await asyncio.gather(*futures, return_exceptions=True)
    except TimeoutError:
        raise PublishFailed(f"no acknowledgement within {timeout}s") from None
    finally:
        for f in futures:
            if not f.done():
                f.cancel()
    acks: list[api.PubAck] = []
    for m, result in zip(messages, results, strict=True):
        if isinstance(result, BaseException):
            raise PublishFailed(f"publish of {m.msg_id} to {m.subject} failed: {result!r}")
        acks.append(result)
    return acks
