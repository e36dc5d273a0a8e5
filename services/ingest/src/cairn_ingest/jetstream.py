"""Publish many messages to JetStream at once and wait for all their acknowledgements.

nats-py's ``publish_async`` costs ~50 µs a message on this machine (a semaphore ``wait_for``, a
future, ``json.loads`` and a dataclass per ack), which alone caps ingest below the 20,000
events/s target. Here one wildcard inbox carries every ack; a batch is one future, and each
reply subject ``{inbox}.{batch}.{index}`` says which message it acknowledges. An ack is only
inspected for an error, never parsed whole. A batch waits for every ack, so the caller learns
exactly which messages were stored and which were refused (a full stream refuses the rest of a
batch once it fills in the middle of it).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from cairn_common.failures import TransientError

Outgoing = tuple[str, bytes, dict[str, str]]
"""``(subject, payload, headers)``"""


STREAM_FULL = 10077
"""JetStream's err_code for "maximum bytes exceeded" (a stream with discard ``new`` is full)."""


class PublishError(Exception):
    """JetStream refused messages (no stream for the subject, a full stream, ...)."""

    def __init__(self, refused: dict[int, _ApiError]) -> None:
        self.refused = refused
        """Index in the batch → what JetStream answered."""
        first = next(iter(refused.values()))
        super().__init__(f"{len(refused)} refused, first: {first.code}: {first.description}")

    @property
    def stream_full(self) -> bool:
        return any(e.err_code == STREAM_FULL for e in self.refused.values())


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


_NO_STREAM = _ApiError(code=503, description="no stream stores this subject")


class _Ack(msgspec.Struct):
    error: _ApiError | None = None


_ack_decoder = msgspec.json.Decoder(_Ack)


class _Batch:
    __slots__ = ("future", "missing", "refused")

    def __init__(self, size: int) -> None:
        self.missing = set(range(size))
        self.refused: dict[int, _ApiError] = {}
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def settle(self, index: int, error: _ApiError | None) -> None:
        if index not in self.missing:
            return
        self.missing.discard(index)
        if error is not None:
            self.refused[index] = error
        if not self.missing:
            if self.refused:
                self.future.set_exception(PublishError(self.refused))
            else:
                self.future.set_result(None)


class BatchPublisher:
    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._inbox: str | None = None
        self._batches: dict[str, _Batch] = {}
        self._ids = itertools.count()
        self._subscribing = asyncio.Lock()

    async def _ensure_inbox(self) -> str:
        async with self._subscribing:
            if self._inbox is None:
                inbox = self._nc.new_inbox()
                await self._nc.subscribe(inbox + ".>", cb=self._on_ack)
                self._inbox = inbox
        return self._inbox

    async def publish(
        self,
        messages: Sequence[Outgoing],
        timeout: float,
    ) -> None:
        """Publish ``(subject, payload, headers)`` messages; return when JetStream acknowledged
        every one. ``TimeoutError`` if it did not answer for all in time, ``PublishError`` (with
        the refused indexes; the others are stored) once it has answered for all but refused
        some."""
        if not messages:
            return
        inbox = self._inbox or await self._ensure_inbox()
        batch_id = str(next(self._ids))
        batch = self._batches[batch_id] = _Batch(len(messages))
        prefix = f"{inbox}.{batch_id}."
        try:
            async with asyncio.timeout(timeout):
                await self._send(prefix, messages)
                await batch.future
        finally:
            del self._batches[batch_id]

    async def _send(
        self, prefix: str, messages: Sequence[tuple[str, bytes, dict[str, str]]]
    ) -> None:
        """All the batch's HPUB commands as one write.

        nats-py's ``publish`` re-validates and re-encodes headers per message (~15 µs each); the
        subjects and header values here are ours (messageIds are checked printable at intake),
        so the commands are built directly and handed to the client's buffered writer, the same
        two calls ``publish`` ends in (``_send_command``, ``_flush_pending``; nats-py is pinned).
        """
        nc = self._nc
        if not nc.is_connected or nc.is_draining_pubs:
            raise TransientError("NATS is not connected")
        out = bytearray()
        for index, (subject, payload, headers) in enumerate(messages):
            header = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            hdr = (header + "\r\n").encode()
            out += (
                f"HPUB {subject} {prefix}{index} {len(hdr)} {len(hdr) + len(payload)}\r\n"
            ).encode()
            out += hdr
            out += payload
            out += b"\r\n"
        nc.stats["out_msgs"] += len(messages)
        nc.stats["out_bytes"] += len(out)
        await nc._send_command(bytes(out))
        await nc._flush_pending()

    async def _on_ack(self, msg: Msg) -> None:
        batch_id, _, index = msg.subject[len(self._inbox or "") + 1 :].partition(".")
        batch = self._batches.get(batch_id)
        if batch is None or batch.future.done():
            return
        error: _ApiError | None = None
        if msg.headers and msg.headers.get("Status") == "503":
            error = _NO_STREAM
        elif b'"error"' in msg.data:
            try:
                error = _ack_decoder.decode(msg.data).error
            except msgspec.DecodeError:
                error = _ApiError(description=msg.data.decode(errors="replace"))
        batch.settle(int(index), error)
