"""The process a destination function runs in, and the frames it speaks (decision 0054).

The dispatcher starts one worker per function destination::

    python -I -m cairn_dispatcher.function_worker <memory_bytes> <dispatcher pid>

with an empty environment, in a session of its own, killed if the dispatcher dies. Everything
the worker owns is the function's: a V8 isolate, and ``RLIMIT_DATA`` set to the function's memory
limit plus the interpreter's own needs, which V8's heap limit alone does not give (ArrayBuffers
live outside the heap). The dispatcher keeps the wall clock: a call or a load that does not
answer in time gets the worker SIGKILLed, so even top-level ``while (true) {}`` costs the
dispatcher nothing but a fresh worker.

Frames on stdin/stdout are a 4-byte big-endian length and a msgpack-encoded ``Frame``. The
worker has no network: ``fetch`` is a ``Fetch`` frame the dispatcher answers with ``Fetched``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import signal
import struct
import sys
from typing import Any

import msgspec
from py_mini_racer import JSEvalException, JSOOMException, MiniRacer, init_mini_racer

HEADER = struct.Struct(">I")
MAX_FRAME = 8 << 20
INTERPRETER_BYTES = 96 << 20
"""What the worker needs besides the function's own memory: Python, V8's bare isolate and
code space (measured at about 50 MB with ``--single-threaded --jitless``), with headroom."""
V8_FLAGS = ("--single-threaded", "--jitless")


class Load(msgspec.Struct, tag="load"):
    """Build the isolate: the prelude, then the function's source (its top level runs here)."""

    prelude: str
    code: str


class Call(msgspec.Struct, tag="call"):
    handler: str
    event: str
    settings: str


class Fetched(msgspec.Struct, tag="fetched"):
    id: int
    reply: str


class Ready(msgspec.Struct, tag="ready"):
    pass


class Result(msgspec.Struct, tag="result"):
    raw: str


class Fetch(msgspec.Struct, tag="fetch"):
    id: int
    url: str
    init: str


class Error(msgspec.Struct, tag="error"):
    """The isolate refused: ``kind`` is ``memory`` (heap limit or an ArrayBuffer the data
    limit refused) or ``error`` (the source does not evaluate)."""

    kind: str
    message: str


Frame = Load | Call | Fetched | Ready | Result | Fetch | Error
_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Frame] = msgspec.msgpack.Decoder(Frame)


def encode(frame: Frame) -> bytes:
    body = _encoder.encode(frame)
    return HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """The next frame; ``asyncio.IncompleteReadError`` at the end of the stream."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if size > MAX_FRAME:
        raise ValueError(f"a frame of {size} bytes is more than {MAX_FRAME}")
    return _decoder.decode(await reader.readexactly(size))


class _Worker:
    def __init__(self, writer: asyncio.StreamWriter, memory_bytes: int) -> None:
        self._writer = writer
        self._memory = memory_bytes
        self._mr: Any = None
        self._done: asyncio.Future[str] | None = None
        self._fetches: dict[int, asyncio.Future[str]] = {}
        self._ids = 0
        self._stack = contextlib.AsyncExitStack()  # lives as long as the process

    def send(self, frame: Frame) -> None:
        self._writer.write(encode(frame))

    async def serve(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                frame = await read_frame(reader)
            except asyncio.IncompleteReadError:
                return  # the dispatcher closed the pipe: nothing more to do
            if isinstance(frame, Fetched):
                if (waiting := self._fetches.pop(frame.id, None)) and not waiting.done():
                    waiting.set_result(frame.reply)
            elif isinstance(frame, Load):
                self.send(await self._load(frame))
            elif isinstance(frame, Call):
                asyncio.get_running_loop().create_task(self._call(frame))

    async def _load(self, frame: Load) -> Frame:
        mr = MiniRacer()
        mr.set_hard_memory_limit(self._memory)
        fetch = await self._stack.enter_async_context(mr.wrap_py_function(self._fetch))
        done = await self._stack.enter_async_context(mr.wrap_py_function(self._settled))
        install = mr.eval(
            "(f, d) => { globalThis.__cairn_fetch = f; globalThis.__cairn_done = d; }"
        )
        install(fetch, done)  # type: ignore[operator,misc]
        try:
            mr.eval(frame.prelude)
            mr.eval(frame.code)  # top-level code: the dispatcher's clock is running
        except JSOOMException:
            return Error("memory", "heap limit")
        except JSEvalException as exc:
            return Error("error", _first_line(exc))
        self._mr = mr
        return Ready()

    async def _call(self, frame: Call) -> None:
        args = msgspec.json.encode([frame.handler, frame.event, frame.settings]).decode()[1:-1]
        self._done = asyncio.get_running_loop().create_future()
        try:
            await self._mr.eval_cancelable(f"__cairn_run({args}).then(__cairn_done); 0")
            raw = await self._done
        except JSOOMException:
            self.send(Error("memory", "heap limit"))
            return
        except JSEvalException as exc:
            self.send(Error("error", _first_line(exc)))
            return
        self.send(Result(raw))

    async def _settled(self, *args: Any) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(str(args[0]) if args else "")

    async def _fetch(self, *args: Any) -> str:
        self._ids += 1
        waiting: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._fetches[self._ids] = waiting
        url = str(args[0]) if args else ""
        init = str(args[1]) if len(args) > 1 else "{}"
        self.send(Fetch(self._ids, url, init))
        return await waiting


def _first_line(exc: Exception) -> str:
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the dispatcher goes, even if it goes by SIGKILL itself."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it went before the line above took effect
        os._exit(1)


async def _main(memory_bytes: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_FRAME)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, sys.stdout
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    init_mini_racer(flags=V8_FLAGS)
    limit = memory_bytes + INTERPRETER_BYTES
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash never writes its memory to disk
    worker = _Worker(writer, memory_bytes)
    worker.send(Ready())  # up: the dispatcher's clock for the load starts now
    await worker.serve(reader)


def main() -> None:
    _die_with_parent(int(sys.argv[2]))
    try:
        asyncio.run(_main(int(sys.argv[1])))
    finally:
        # V8's threads and mini-racer's finalisers must not keep a dead worker alive.
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
