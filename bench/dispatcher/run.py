"""Deliveries per second with ONE dispatcher process, to a local webhook sink and SMTP server.

    uv run python bench/dispatcher/run.py [--webhooks 20000] [--emails 5000] [--rate-limit 2000/s]

Starts its own NATS and PostgreSQL (loopback, a temporary folder), queues the deliveries in the
deliveries stream first, then starts one dispatcher process and measures from the first request a
sink sees to the last (so start-up is not counted). Prints the figures and stops everything.

``--rate-limit`` puts that limit on the webhook channel (``options.rate_limit``): the webhook
rate should then be the limit, every delivery still sent once, and the CPU per delivery shows
what deferring and redelivering the excess costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import nats
from aiohttp import web
from aiosmtpd.controller import Controller

from cairn_cli.local import LocalNats, LocalPostgres, free_port
from cairn_cli.local import cpu_seconds as process_cpu_seconds
from cairn_common.bus import provision_topology
from cairn_common.db import migrate
from cairn_common.messages import DeliveryRequested, encode
from cairn_common.topology import Topology


class Counter:
    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.done = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.pid: int | None = None
        self.first_cpu = 0.0

    def hit(self) -> None:
        now = time.perf_counter()
        if self.count == 0:
            self.first = now
            self.first_cpu = cpu_seconds(self.pid)
        self.count += 1
        self.last = now
        if self.count >= self.total:
            self.loop.call_soon_threadsafe(self.done.set)

    def rate(self) -> float:
        span = self.last - self.first
        return (self.count - 1) / span if span > 0 else float("nan")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (Linux /proc), 0 when unknown."""
    if pid is None:
        return 0.0
    try:
        return process_cpu_seconds(pid)
    except OSError:
        return 0.0


class SmtpCounter:
    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.counter.loop.call_soon_threadsafe(self.counter.hit)
        return "250 OK"


def request(i: int, channel: str, address: str | None) -> DeliveryRequested:
    return DeliveryRequested(
        delivery_id=f"{channel}-{i}",
        profile_id=f"user-{i % 5000}",
        journey="bench",
        version=1,
        instance_id=f"inst-{i}",
        step_id="s1",
        visit=1,
        requested_at=datetime.now(UTC),
        channel=channel,
        template=f"{channel}-tpl",
        address=address,
        profile={"first_name": "Ada"},
        event={"event": "Cart Abandoned", "properties": {"cart_id": f"c{i}", "total": 42}},
    )


async def enqueue(nats_url: str, topology: Topology, reqs: list[DeliveryRequested]) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await provision_topology(js, topology)
    for start in range(0, len(reqs), 1000):
        chunk = reqs[start : start + 1000]
        await asyncio.gather(
            *(
                js.publish(
                    topology.delivery_subject(r.channel or ""),
                    encode(r),
                    headers={"Nats-Msg-Id": r.delivery_id},
                )
                for r in chunk
            )
        )
    await nc.close()


async def phase(
    name: str,
    counter: Counter,
    reqs: list[DeliveryRequested],
    nats_url: str,
    env: dict[str, str],
    log: Path,
) -> float:
    topology = Topology(env["CAIRN_NAMESPACE"])
    await enqueue(nats_url, topology, reqs)
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cairn_dispatcher",
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        counter.pid = proc.pid
        try:
            await asyncio.wait_for(counter.done.wait(), timeout=600)
            cpu = cpu_seconds(proc.pid) - counter.first_cpu
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), timeout=30)
    rate = counter.rate()
    per_cpu = counter.count / cpu if cpu > 0 else float("nan")
    print(
        f"{name}: {counter.count} deliveries, {rate:,.0f}/s wall-clock with one dispatcher"
        f" process; {per_cpu:,.0f} per dispatcher CPU-second ({cpu:.1f} s CPU)"
    )
    return rate


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="cairn-bench-dispatcher-"))
    nats_server = LocalNats(root / "nats")
    pg = LocalPostgres(root / "pg", fsync=False)
    nats_server.start(log_file=root / "nats.log")
    pg.start(log_file=root / "pg.log")
    runner: web.AppRunner | None = None
    smtp: Controller | None = None
    try:
        pg.create_database("bench")
        url = pg.url("bench")
        await migrate(url)
        hooks = Counter(args.webhooks)

        async def hook(_: web.Request) -> web.Response:
            hooks.hit()
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        web_port = free_port()
        await web.TCPSite(runner, "127.0.0.1", web_port).start()
        mails = Counter(args.emails)
        smtp_port = free_port()
        smtp = Controller(SmtpCounter(mails), hostname="127.0.0.1", port=smtp_port)
        smtp.start()

        db = await asyncpg.connect(url)
        docs = {
            ("Channel", "webhook"): {
                "type": "webhook",
                "settings": {"url": f"http://127.0.0.1:{web_port}/hook"},
                "allow_networks": ["127.0.0.0/8"],  # the sink is on loopback
                **({"rate_limit": args.rate_limit} if args.rate_limit else {}),
            },
            ("Channel", "email"): {
                "type": "smtp",
                "settings": {
                    "host": "127.0.0.1",
                    "port": smtp_port,
                    "starttls": False,
                    "from": "bench@example.test",
                },
            },
            ("Template", "webhook-tpl"): {
                "channel": "webhook",
                "body": '{"cart": "{{ event.properties.cart_id }}"}',
            },
            ("Template", "email-tpl"): {
                "channel": "email",
                "subject": "Hi {{ profile.first_name }}",
                "html": "<p>Cart {{ event.properties.cart_id }}: {{ event.properties.total }}</p>",
                "text": "Cart {{ event.properties.cart_id }}",
            },
        }
        for (kind, name), doc in docs.items():
            await db.execute(
                "INSERT INTO resources (kind, name, document) VALUES ($1, $2, $3::jsonb)",
                kind,
                name,
                json.dumps(doc),
            )
        await db.close()
        env = {
            **os.environ,
            "CAIRN_NATS_URL": nats_server.url,
            "CAIRN_DATABASE_URL": url,
            "CAIRN_NAMESPACE": "bench",
            "CAIRN_LOG_FORMAT": "json",
            "CAIRN_LOG_LEVEL": "warning",
            "CAIRN_FETCH_BATCH": str(args.batch),
            "CAIRN_SMTP_POOL_SIZE": str(args.smtp_pool),
        }
        log = root / "dispatcher.log"
        webhook_reqs = [request(i, "webhook", None) for i in range(args.webhooks)]
        email_reqs = [request(i, "email", f"user{i}@example.test") for i in range(args.emails)]
        print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
        name = f"webhook (rate_limit {args.rate_limit})" if args.rate_limit else "webhook"
        await phase(name, hooks, webhook_reqs, nats_server.url, env, log)
        if args.rate_limit:
            db = await asyncpg.connect(url)
            held = await db.fetchrow(
                "SELECT count(*) FILTER (WHERE held_since IS NOT NULL) AS held,"
                " count(DISTINCT delivery_id) AS rows,"
                " max(extract(epoch FROM sent_at - held_since)) AS longest,"
                " sum(CASE WHEN sent_at < slot_at - interval '20 ms' THEN 1 ELSE 0 END) AS early"
                " FROM delivery_ledger WHERE channel = 'webhook'"
            )
            await db.close()
            print(
                f"  ledger: {held['rows']} deliveries, {held['held']} held back by the limit"
                f" (longest {held['longest'] or 0:.1f} s), {held['early']} sent before their slot"
            )
        await phase("smtp", mails, email_reqs, nats_server.url, env, log)
    finally:
        if smtp is not None:
            smtp.stop()
        if runner is not None:
            await runner.cleanup()
        pg.stop()
        nats_server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--webhooks", type=int, default=20_000)
    parser.add_argument("--emails", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--smtp-pool", type=int, default=32)
    parser.add_argument("--rate-limit", default="", help="e.g. 2000/s, on the webhook channel")
    asyncio.run(main(parser.parse_args()))
