"""The load client of the end-to-end bench: carts in through the Segment HTTP API (/v1/batch).

Each cart is an ``identify`` and a ``Cart Abandoned`` in one request's batch (``--carts-per-batch``
carts a request); 5 % of triggers are posted again with the same messageId once their request was
accepted, as a client does that did not see the 200 in time. ``--rate 0`` sends as fast as
ingest accepts over ``--connections`` connections; ``--rate R`` sends R carts a second, open
loop (a slow answer does not slow the offered load). Writes, as JSON to ``--out``: when each
cart's request left, every request's accept latency and time, the counts, its own CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import resource
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import cart


class Result(msgspec.Struct):
    sent_at: dict[str, float]
    """cart id -> wall-clock time its (first) request left."""
    accept_latency: list[float]
    accepted_at: list[float]
    """Wall-clock time of every accepted request (the fault run looks for gaps)."""
    events: int
    accepted_events: int
    failed_requests: int
    retried_requests: int
    started: float
    finished: float
    cpu_s: float = 0.0
    peak_mb: float = 0.0


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--write-key", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--carts", type=int, required=True)
    p.add_argument("--rate", type=float, default=0.0)
    p.add_argument("--carts-per-batch", type=int, default=10)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    auth = "Basic " + base64.b64encode(f"{args.write_key}:".encode()).decode()
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    url = args.url.rstrip("/") + "/v1/batch"
    carts = [cart(args.seed, args.run, i) for i in range(args.carts)]
    size = args.carts_per_batch
    batches: list[list[dict[str, Any]]] = []
    again: dict[int, list[dict[str, Any]]] = {}
    """Per batch, the triggers its client sends a second time once the first was accepted (as a
    client does that timed out waiting for the 200): never before, so the profile's identify and
    its first trigger keep their order, as they do for any client that retries in order."""
    for start in range(0, len(carts), size):
        chunk = carts[start : start + size]
        if twice := [c.trigger() for c in chunk if c.sent_twice]:
            again[len(batches)] = twice
        batches.append([e for c in chunk for e in c.events()])
    events = sum(map(len, batches)) + sum(map(len, again.values()))
    result = Result({}, [], [], events, 0, 0, 0, time.time(), 0.0)

    async def post(http: aiohttp.ClientSession, k: int) -> None:
        await send(http, batches[k])
        if k in again:
            await send(http, again[k])

    async def send(http: aiohttp.ClientSession, events: list[dict[str, Any]]) -> None:
        body = msgspec.json.encode({"batch": events})
        now = time.time()
        for e in events:
            if e["type"] == "track":
                result.sent_at.setdefault(e["properties"]["cart_id"], now)
        for attempt in range(240):  # a client retries while ingest restarts (the fault run)
            started = time.perf_counter()
            try:
                async with http.post(url, data=body, headers=headers) as resp:
                    answer = await resp.json(content_type=None)
                    if resp.status == 200:
                        result.accept_latency.append(time.perf_counter() - started)
                        result.accepted_at.append(time.time())
                        result.accepted_events += int(answer.get("accepted", len(events)))
                        return
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass
            result.retried_requests += 1
            await asyncio.sleep(min(0.05 * 2**attempt, 0.25))
        result.failed_requests += 1

    connector = aiohttp.TCPConnector(limit=args.connections if args.rate <= 0 else 256)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        if args.rate <= 0:
            queue = iter(range(len(batches)))

            async def worker() -> None:
                for k in queue:
                    await post(http, k)

            await asyncio.gather(*(worker() for _ in range(args.connections)))
        else:
            interval = size / args.rate
            t0 = time.perf_counter()
            tasks = []
            for k in range(len(batches)):
                delay = t0 + k * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(post(http, k)))
            await asyncio.gather(*tasks)
    result.finished = time.time()
    result.cpu_s = time.process_time()
    result.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write(args.out, msgspec.json.encode(result))


def write(path: str, data: bytes) -> None:
    Path(path).write_bytes(data)


if __name__ == "__main__":
    asyncio.run(main())
