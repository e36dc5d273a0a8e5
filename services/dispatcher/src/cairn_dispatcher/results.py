"""Publish a batch's DeliveryResults into the profiles' partitions with one wait for all acks.

``js.publish`` per result costs a request, a future and a parsed PubAck each. Here every result
is a core publish whose reply subject ``{inbox}.{batch}.{index}`` lands on one wildcard
subscription; the batch waits on a single future. A result whose ack is missing or an error is
reported as not published, and its delivery is retried (the ledger makes that a re-publish only).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from cairn_common.bus import MSG_ID, trace_headers
from cairn_common.messages import DeliveryResult, encode
from cairn_common.partitioning import partition_for
from cairn_common.topology import Topology


class _Batch:
    __slots__ = ("future", "ok", "waiting")

    def __init__(self, size: int) -> None:
        self.ok = [False] * size
        self.waiting = size
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if size == 0:
            self.future.set_result(None)

    def settle(self, index: int, ok: bool) -> None:
        if 0 <= index < len(self.ok) and not self.ok[index]:
            self.ok[index] = ok
            self.waiting -= 1
            if self.waiting <= 0 and not self.future.done():
                self.future.set_result(None)


class ResultPublisher:
    def __init__(self, nc: NATS, topology: Topology, partitions: int, timeout: float = 5.0):
        self._nc = nc
        self._topology = topology
        self._partitions = partitions
        self._timeout = timeout
        self._inbox: str | None = None
        self._subscribing = asyncio.Lock()
        self._batches: dict[int, _Batch] = {}
        self._seq = 0

    def subject(self, profile_id: str) -> tuple[int, str]:
        partition = partition_for(profile_id, self._partitions)
        return partition, self._topology.input_subject(partition, "result")

    async def _ensure_inbox(self) -> str:
        async with self._subscribing:
            if self._inbox is None:
                inbox = self._nc.new_inbox()
                await self._nc.subscribe(inbox + ".>", cb=self._on_ack)
                self._inbox = inbox
        return self._inbox

    async def _on_ack(self, msg: Msg) -> None:
        try:
            _, batch, index = msg.subject.rsplit(".", 2)
            pending = self._batches.get(int(batch))
        except ValueError:
            return
        if pending is not None:
            # A PubAck is {"stream":..,"seq":..}; a failure carries "error" or is a bare status.
            pending.settle(int(index), bool(msg.data) and b'"error"' not in msg.data)

    async def publish(
        self,
        results: Sequence[DeliveryResult],
        headers: Sequence[Mapping[str, str]] | None = None,
    ) -> list[bool]:
        """Whether JetStream stored each result (``Nats-Msg-Id = result:{id}:{outcome}``).

        ``headers[i]`` (trace context of result ``i``) replaces the current span's context."""
        inbox = await self._ensure_inbox()
        self._seq += 1
        seq = self._seq
        batch = _Batch(len(results))
        self._batches[seq] = batch
        base_headers = trace_headers()
        try:
            for index, result in enumerate(results):
                own = headers[index] if headers is not None and headers[index] else base_headers
                sent = {**own, MSG_ID: f"result:{result.delivery_id}:{result.outcome}"}
                await self._nc.publish(
                    self._topology.input_subject(result.partition, "result"),
                    encode(result),
                    reply=f"{inbox}.{seq}.{index}",
                    headers=sent,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(batch.future), timeout=self._timeout)
            return list(batch.ok)
        finally:
            del self._batches[seq]
