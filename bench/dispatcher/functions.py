"""What the function sandbox costs: a worker process per function destination (decision 0054).

    uv run python bench/dispatcher/functions.py [--calls 500]

Runs destination functions through ``DestinationFunction`` as the dispatcher does (a worker
process, frames over a pipe, fetch served by the caller; no NATS or database involved) and prints:
the cold start (worker up and source loaded), warm call latency, a CPU-bound loop under
``--jitless``, a fetch round trip to a loopback server, and the worker's resident memory.
Bounded in calls and time; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from aiohttp import web

from cairn_cli.local import memory_mb
from cairn_dispatcher.documents import Target
from cairn_dispatcher.egress import EgressPolicy
from cairn_dispatcher.providers.functions import DestinationFunction

ECHO = "async function onTrack(e, s) { return e.messageId; }"
LOOP = "async function onTrack(e, s) { let x = 0; for (let i = 0; i < 3e7; i++) x += i; return x; }"
FETCH = "async function onTrack(e, s) { return (await fetch(s.url)).status; }"


def _target(code: str, **settings: Any) -> Target:
    return Target(
        kind="Destination",
        name="bench",
        type="function",
        settings={"allowed_hosts": ["127.0.0.1"], **settings},
        code=code,
        egress=EgressPolicy(("127.0.0.0/8",)),
    )


async def _timed(fn: DestinationFunction, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        outcome = await fn._call(None, fn._settings())  # type: ignore[arg-type]
        out.append(time.perf_counter() - t0)
        assert type(outcome).__name__ == "Sent", outcome
    return out


def _ms(values: list[float], q: float) -> str:
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.2f} ms"


async def main(calls: int) -> None:
    app = web.Application()
    app.router.add_get("/", lambda _r: web.Response(text="ok"))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def function(code: str, **settings: Any) -> DestinationFunction:
        fn = DestinationFunction(
            _target(code, **settings), timeout=10, memory_mb=64, http_timeout=5
        )
        fn.event = lambda _job, name: {"type": "track", "event": name, "messageId": "m"}  # type: ignore[method-assign]
        return fn

    colds = []
    for _ in range(10):
        fn = function(ECHO)
        colds.extend(await _timed(fn, 1))
        await fn.close()
    echo = function(ECHO)
    warm = await _timed(echo, calls)
    assert echo._worker is not None
    rss = memory_mb(echo._worker._proc.pid)
    loop = function(LOOP)
    await _timed(loop, 1)
    loops = await _timed(loop, 5)
    fetch = function(FETCH, url=f"http://127.0.0.1:{port}/")
    await _timed(fetch, 1)
    fetches = await _timed(fetch, min(calls, 200))
    for fn in (echo, loop, fetch):
        await fn.close()
    await runner.cleanup()

    print(f"cold start (worker + load + first call), 10 runs: median {_ms(colds, 0.5)}")
    print(f"warm call, {calls} calls: p50 {_ms(warm, 0.5)}, p99 {_ms(warm, 0.99)}")
    print(f"CPU loop of 3e7 additions (--jitless): median {statistics.median(loops):.2f} s")
    n = len(fetches)
    print(f"fetch to loopback, {n} calls: p50 {_ms(fetches, 0.5)}, p99 {_ms(fetches, 0.99)}")
    print(f"idle worker resident memory after {calls} calls: {rss:.0f} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(asyncio.wait_for(main(args.calls), timeout=300))
