"""Ingest benchmark: /v1/batch with 100-event batches against a real ingest process and real NATS
and PostgreSQL on loopback.

    uv run python bench/ingest/run.py [--seconds 10] [--connections 8] [--profile]

Phase 1 (throughput): closed loop, ``--connections`` clients posting back to back; prints the
sustained events/s. Phase 2 (latency): open loop at half that rate; prints request latency
percentiles. ``--profile`` runs ingest under cProfile and prints where its time went.
Everything it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import pstats
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import msgspec

from cairn_cli.local import LocalNats, LocalPostgres, cpu_seconds, free_port
from cairn_common.db import migrate
from cairn_control.keys import create_key

BATCH = 100


def make_body(run: str) -> bytes:
    """A 100-event batch; ``@REQ@`` is replaced per request so every messageId is new."""
    events = [
        {
            "type": "track",
            "userId": f"user-{i * 7919 % 5000}",
            "event": "Product Viewed",
            "messageId": f"{run}-@REQ@-{i}",
            "properties": {"sku": f"sku-{i}", "price": 19.99, "currency": "EUR", "list": "s"},
            "context": {"library": {"name": "bench", "version": "1"}, "ip": "127.0.0.1"},
            "timestamp": "2026-11-22T10:00:00.000Z",
        }
        for i in range(BATCH)
    ]
    return msgspec.json.encode({"sentAt": "2026-11-22T10:00:01.000Z", "batch": events})


def start_ingest(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


class Load:
    def __init__(self, url: str, key: str) -> None:
        self.url = url + "/v1/batch"
        self.auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        self.template = make_body(uuid.uuid4().hex[:8])
        self.sent = 0
        self.failed = 0

    def body(self) -> bytes:
        self.sent += 1
        return self.template.replace(b"@REQ@", str(self.sent).encode())

    async def post(self, http: aiohttp.ClientSession) -> float:
        started = time.perf_counter()
        async with http.post(
            self.url,
            data=self.body(),
            headers={"Authorization": self.auth, "Content-Type": "application/json"},
        ) as resp:
            await resp.read()
            if resp.status != 200:
                self.failed += 1
        return time.perf_counter() - started


async def throughput(load: Load, seconds: float, connections: int) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def client(http: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await load.post(http)
            done += 1

    conn = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=conn) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return done * BATCH / elapsed


async def latency(load: Load, seconds: float, events_per_second: float) -> list[float]:
    """Open loop: requests start on schedule whether or not earlier ones have finished."""
    interval = BATCH / events_per_second
    latencies: list[float] = []
    conn = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=conn) as http, asyncio.TaskGroup() as tg:
        start = time.perf_counter()
        n = 0
        while (now := time.perf_counter()) - start < seconds:
            due = start + n * interval
            if due > now:
                await asyncio.sleep(due - now)
            tg.create_task(_timed(load, http, latencies))
            n += 1
    return latencies


async def _timed(load: Load, http: aiohttp.ClientSession, into: list[float]) -> None:
    into.append(await load.post(http))


async def server_buckets(url: str) -> dict[str, float]:
    """Cumulative bucket counts of ingest's request-time histogram for /v1/{kind}."""
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        text = await resp.text()
    buckets: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("cairn_ingest_http_request_seconds_bucket{") and "/v1/{kind}" in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[le] = float(line.rsplit(" ", 1)[1])
    return buckets


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def wait_http(url: str, proc: subprocess.Popen[bytes]) -> None:
    async with asyncio.timeout(60), aiohttp.ClientSession() as http:
        while True:
            if proc.poll() is not None:
                raise SystemExit("ingest exited while starting")
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="cairn-bench-"))
    nats_server = LocalNats(root / "nats")
    pg = LocalPostgres(root / "pg", fsync=False)
    nats_server.start(log_file=root / "nats.log")
    pg.start(log_file=root / "pg.log")
    proc: subprocess.Popen[bytes] | None = None
    try:
        pg.create_database("bench")
        db = pg.url("bench")
        await migrate(db)
        async with asyncpg.create_pool(db, min_size=1, max_size=1) as pool:
            key = (await create_key(pool, "bench")).secret
        port, health = free_port(), free_port()
        env = {
            **os.environ,
            "CAIRN_NATS_URL": nats_server.url,
            "CAIRN_DATABASE_URL": db,
            "CAIRN_HTTP_PORT": str(port),
            "CAIRN_HEALTH_PORT": str(health),
            "CAIRN_LOG_FORMAT": "json",
            "CAIRN_LOG_LEVEL": "warning",
        }
        prof = root / "ingest.prof"
        cmd = [sys.executable, "-m", "cairn_ingest"]
        if args.profile:
            cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "cairn_ingest"]
        proc = start_ingest(cmd, env, root / "ingest.log")
        await wait_http(f"http://127.0.0.1:{health}/readyz", proc)
        load = Load(f"http://127.0.0.1:{port}", key)
        await throughput(load, 2, args.connections)  # warm-up
        cpu_before, sent_before = cpu_seconds(proc.pid), load.sent
        rate = await throughput(load, args.seconds, args.connections)
        cpu = cpu_seconds(proc.pid) - cpu_before
        per_event = cpu / ((load.sent - sent_before) * BATCH) * 1e6
        print(f"throughput: {rate:,.0f} events/s sustained over {args.seconds:.0f}s "
              f"({args.connections} connections, {BATCH}-event batches)")  # fmt: skip
        print(f"ingest CPU: {per_event:.1f} us per event, i.e. {1e6 / per_event:,.0f} events/s "
              "per fully used core (less distorted by other load than events/s)")  # fmt: skip
        half = rate / 2
        metrics_url = f"http://127.0.0.1:{health}/metrics"
        before = await server_buckets(metrics_url)
        lat = await latency(load, args.seconds, half)
        after = await server_buckets(metrics_url)
        print(f"latency at {half:,.0f} events/s ({len(lat)} requests): "
              f"p50 {pct(lat, 0.50):.1f} ms, p90 {pct(lat, 0.90):.1f} ms, "
              f"p99 {pct(lat, 0.99):.1f} ms, max {max(lat) * 1000:.1f} ms")  # fmt: skip
        total = after["+Inf"] - before["+Inf"]
        shares = ", ".join(
            f"<= {le} s: {(after[le] - before[le]) / total:.1%}" for le in ("0.01", "0.05", "0.1")
        )
        print(f"  measured inside ingest (request start to answer): {shares}")
        print(f"non-200 answers: {load.failed} of {load.sent}")
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        nats_server.stop()
        pg.stop()
    if args.profile and prof.exists():
        print("\nwhere ingest's time went (cumulative, top 25):")
        pstats.Stats(str(prof)).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--profile", action="store_true")
    asyncio.run(main(parser.parse_args()))
