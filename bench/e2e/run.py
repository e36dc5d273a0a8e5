"""What a user gets, end to end: carts in at the Tracking API, messages out at the providers, with
every process of Cairn on this machine.

    uv run python bench/e2e/run.py                      # 20,000 carts as fast as accepted
    uv run python bench/e2e/run.py --rate 400           # 400 carts/s for --seconds (60)
    uv run python bench/e2e/run.py --ladder             # the highest rate that keeps up
    uv run python bench/e2e/run.py --jetstream-sync both --rate 200   # both sync policies

It starts Cairn with ``cairn up`` in a temporary folder (NATS, PostgreSQL, the four services as
their own processes, exactly as a newcomer runs it), the providers and customers
(``customers.py``: real SMTP, Twilio's and FCM's HTTP APIs, shoppers who open or order) and the
load client (``load.py``, the Segment HTTP API) as processes of their own, applies and publishes
the journey of ``workload.documents`` and sends the carts of ``workload.cart``. Then it prints,
and writes as JSON (``--out``): events/s accepted, the carts/s the journeys kept up with, accept
latency, event->email, SMS and push lateness, per-cart correctness with examples, CPU seconds
and peak memory per process, PostgreSQL transactions, rollbacks and deadlocks per cart, JetStream
bytes per cart, PostgreSQL size per 1,000 instances, and warnings in the services' logs.
Everything it starts is stopped at the end; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from load import Result as LoadResult  # noqa: E402
from workload import JOURNEY, TEMPLATES, cart, documents, parse_cart_id  # noqa: E402

from cairn_cli.local import free_port  # noqa: E402
from cairn_cli.local_system import LocalState, read_state  # noqa: E402

P99_TARGET = 0.5
"""The ladder's bar: p99 event->email under this many seconds, and every send right."""


def say(text: str) -> None:
    print(f"e2e | {text}", flush=True)


# ---- the system ----------------------------------------------------------------------------------


class System:
    """``cairn up`` in a folder of its own, on free ports."""

    def __init__(self, home: Path, sync: str, cluster: bool = False) -> None:
        self.home = home
        self.sync = sync
        self.cluster = cluster
        """Scaled out as deploy/k8s runs it: three NATS nodes (R3 streams), two matchers and two
        dispatchers."""
        self.log = home / "cairn-up.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.state: LocalState | None = None
        self.env = {
            **os.environ,
            "CAIRN_DATA_DIR": str(home),
            "CAIRN_BENCH_TWILIO_TOKEN": "bench-token",
            "CAIRN_BENCH_FCM_TOKEN": "bench-token",
        }

    def start(self) -> LocalState:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "ports.json").write_text(
            json.dumps({"nats_monitor": free_port(), "sink_smtp": free_port(),
                        "sink_http": free_port()})
        )  # fmt: skip
        args = [
            sys.executable, "-m", "cairn_cli", "up", "--data-dir", str(self.home),
            "--http-port", str(free_port()), "--admin-port", str(free_port()),
            "--nats-port", str(free_port()), "--postgres-port", str(free_port()),
            "--jetstream-sync", self.sync,
        ]  # fmt: skip
        if self.cluster:
            args += ["--nats-nodes", "3", "--scale", "matcher=2,dispatcher=2"]
        self.proc = subprocess.Popen(
            args, env=self.env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"cairn up exited:\n{self.log.read_text()[-4000:]}")
            state = read_state(self.home)
            if state is not None and state.write_key:
                self.state = state
                return state
            time.sleep(0.2)
        raise SystemExit(f"cairn up not ready in 180 s:\n{self.log.read_text()[-4000:]}")

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "cairn_cli", *args],
            env=self.env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise SystemExit(f"cairn {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result.stdout

    def processes(self) -> dict[str, int]:
        """Every process of the system by role (the services' current PIDs)."""
        state = read_state(self.home) or self.state
        assert state is not None
        found = {name: ep.pid for name, ep in state.services.items()}
        for name, (pid, _) in self.nats_nodes().items():
            found[name] = pid
        with contextlib.suppress(OSError, ValueError, IndexError):  # restarting
            pid_file = self.home / "postgres" / "postmaster.pid"
            found["postgres"] = int(pid_file.read_text().split()[0])
        return found

    def nats_nodes(self) -> dict[str, tuple[int, str]]:
        """Each NATS server (``nats``, ``nats-2``, ...): its PID and monitoring URL."""
        found = {}
        for ports in self.home.glob("nats*/ports/nats-server_*.ports"):
            with contextlib.suppress(OSError, ValueError, KeyError):  # being written
                monitor = json.loads(ports.read_text())["monitoring"][0]
                found[ports.parent.parent.name] = (int(ports.stem.rsplit("_", 1)[1]), monitor)
        return found

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# ---- measuring processes -------------------------------------------------------------------------


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """A process of the bench's own (load client, customers), started from the event loop: it
    does not wait for it."""
    return subprocess.Popen(cmd, **kwargs)


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and everything it started (live, and exited and reaped)."""
    try:
        root = psutil.Process(pid)
        t = root.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                c = child.cpu_times()
                total += c.user + c.system
        return float(total)
    except psutil.Error:
        return 0.0


def tree_memory_mb(pid: int) -> float:
    """Resident memory of a process and its children; proportional (PSS) so the shared memory of
    PostgreSQL's backends is counted once."""
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
    return total / 1e6


@dataclass
class Meter:
    """CPU and memory of every process between ``begin`` and ``end``. The processes are looked
    up again every second, so a service restarted mid-run (the fault run) is counted as its old
    process up to its last sample and its new one from its first."""

    find: Callable[[], dict[str, int]]
    cpu: dict[str, float] = field(default_factory=dict)
    peak_mb: dict[str, float] = field(default_factory=dict)
    series: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    """(wall-clock time, RSS MB by process) every two seconds: the soak's memory over time."""
    wall: float = 0.0
    _seen: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _t0: float = 0.0

    def begin(self) -> None:
        self._t0 = time.monotonic()
        self._observe(first=True)
        self._task = asyncio.get_running_loop().create_task(self._sample())

    def _observe(self, first: bool = False) -> dict[str, int]:
        pids = self.find()
        for name, pid in pids.items():
            now = tree_cpu(pid)
            start, _ = self._seen.get((name, pid), (0.0 if not first else now, 0.0))
            self._seen[(name, pid)] = (start, now)
        return pids

    async def _sample(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(OSError, ValueError):
                pids = self._observe()
                tick += 1
                if tick % 2 == 0:
                    sample: dict[str, float] = {}
                    for name, pid in pids.items():
                        mb = await asyncio.to_thread(tree_memory_mb, pid)
                        self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), mb)
                        sample[name.split("-")[0]] = sample.get(name.split("-")[0], 0.0) + mb
                    self.series.append((time.time(), sample))

    async def end(self) -> None:
        self.wall = time.monotonic() - self._t0
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._observe()
        self.cpu = {}
        for (name, _), (start, last) in self._seen.items():
            self.cpu[name] = self.cpu.get(name, 0.0) + max(last - start, 0.0)


async def database_counters(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT xact_commit, xact_rollback, deadlocks, pg_database_size(datname) AS size"
            " FROM pg_stat_database WHERE datname = current_database()"
        )
        instances = await conn.fetchval("SELECT count(*) FROM journey_instances")
        return {**dict(row), "instances": int(instances)}
    finally:
        await conn.close()


async def nats_counters(http: aiohttp.ClientSession, monitor_url: str) -> dict[str, int]:
    async with http.get(f"{monitor_url}/jsz") as resp:
        jsz = await resp.json()
    async with http.get(f"{monitor_url}/varz") as resp:
        varz = await resp.json()
    return {
        "stored_bytes": int(jsz.get("bytes", 0)),
        "stored_messages": int(jsz.get("messages", 0)),
        "in_bytes": int(varz.get("in_bytes", 0)),
        "in_msgs": int(varz.get("in_msgs", 0)),
    }


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def start_profiles(pids: dict[str, int], folder: Path, seconds: float) -> dict[str, Path]:
    """py-spy sampling each service for ``seconds`` (non-blocking: the service never pauses)."""
    outputs = {}
    for name in SERVICES:
        if name not in pids:
            continue
        out = outputs[name] = folder / f"profile-{name}.txt"
        spawn(
            ["py-spy", "record", "--pid", str(pids[name]), "--rate", "100", "--nonblocking",
             "--format", "raw", "--duration", str(max(1, round(seconds))), "-o", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    return outputs


def profile_top(path: Path, top: int = 8) -> list[tuple[str, float]]:
    """The functions a service spent its sampled time in (self time), as shares of its samples,
    from py-spy's collapsed stacks ("frame;frame;... count")."""
    if not path.exists():
        return []
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.split(";")[-1]
        own[re.sub(r" \((.*/)?", " (", leaf)] += int(count)
        total += int(count)
    return [(frame, n / total) for frame, n in own.most_common(top)] if total else []


def log_warnings(text: str) -> dict[str, Any]:
    """Warnings and errors the services logged, per service, with the commonest messages."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for line in ANSI.sub("", text).splitlines():
        who, bar, rest = line.partition("| ")
        if not bar:
            continue
        for level in ("warning", "error", "critical"):
            if f"[{level}" in rest[:60]:
                message = rest.split("]", 1)[-1].strip().split("  ")[0][:80]
                counts[who.strip()][f"{level}: {message}"] += 1
    return {who: {"total": sum(c.values()), "top": c.most_common(3)} for who, c in counts.items()}


# ---- the fault run ------------------------------------------------------------------------------

SERVICES = ("ingest", "matcher", "scheduler", "dispatcher")


@dataclass
class Fault:
    target: str
    offset: float
    """Seconds after the load started."""
    process: str = ""
    """The process killed: ``target`` itself, or with replicas one of them (``matcher-2``); for
    ``nats`` in a cluster, the node leading the inputs stream at that moment."""
    pid: int = 0
    killed_at: float = 0.0
    back_after: float | None = None
    """Seconds from the SIGKILL until the target answered again (ready, or accepting logins)."""
    owned_after: float | None = None
    """For a matcher: seconds from the SIGKILL until every partition it held had a new lease."""


def fault_plan(seed: int, kills: int, seconds: float, only: list[str] | None = None) -> list[Fault]:
    """Each service SIGKILLed ``kills`` times, NATS and PostgreSQL once each (or each of
    ``only`` ``kills`` times), in a seeded random order at seeded random moments spread over the
    first 85 % of the load."""
    rng = random.Random(seed)
    if only:
        targets = [t for t in only for _ in range(kills)]
    else:
        targets = [t for t in SERVICES for _ in range(kills)] + ["nats", "postgres"]
    rng.shuffle(targets)
    slot = seconds * 0.75 / len(targets)
    return [
        Fault(t, seconds * 0.1 + slot * (i + 0.5 + rng.uniform(-0.3, 0.3)))
        for i, t in enumerate(targets)
    ]


class Faults:
    def __init__(self, system: System, http: aiohttp.ClientSession, plan: list[Fault]) -> None:
        self.system = system
        self.http = http
        self.plan = plan

    async def run(self, started: float) -> None:
        for n, fault in enumerate(self.plan):
            await asyncio.sleep(max(0.0, started + fault.offset - time.time()))
            fault.process = await self._choose(fault.target, n)
            pid = self.system.processes().get(fault.process)
            if pid is None:
                continue
            held = await self._leases_of(fault.process) if fault.target == "matcher" else {}
            fault.pid, fault.killed_at = pid, time.time()
            os.kill(pid, signal.SIGKILL)
            back = await self._back(fault)
            fault.back_after = None if back is None else back - fault.killed_at
            shown = "not back in 60 s" if back is None else f"back after {fault.back_after:.2f} s"
            if held:
                owned = await self._owned_again(held, fault.killed_at + 60)
                fault.owned_after = None if owned is None else owned - fault.killed_at
                shown += f", its {len(held)} partitions owned again after " + (
                    "-" if fault.owned_after is None else f"{fault.owned_after:.2f} s"
                )
            say(f"fault: SIGKILL {fault.process} (pid {pid}) at +{fault.offset:.1f} s; {shown}")

    async def _choose(self, target: str, n: int) -> str:
        """The process to kill: with replicas, each in turn; a NATS cluster's inputs leader."""
        running = self.system.processes()
        if target == "nats" and self.system.cluster:
            return await self._inputs_leader() or "nats"
        replicas = sorted(name for name in running if name.split("-")[0] == target)
        return replicas[n % len(replicas)] if replicas else target

    async def _inputs_leader(self) -> str | None:
        for _, monitor in self.system.nats_nodes().values():
            with contextlib.suppress(OSError, TimeoutError, aiohttp.ClientError, ValueError):
                async with self.http.get(f"{monitor}/jsz?streams=true") as resp:
                    body = await resp.json()
                for account in body.get("account_details", []):
                    for stream in account.get("stream_detail", []):
                        if stream["name"].endswith("_INPUTS"):
                            leader = str(stream.get("cluster", {}).get("leader", ""))
                            node = leader.rsplit("-", 1)[-1]  # cairn-local-2 -> nats-2
                            return "nats" if node == "1" else f"nats-{node}"
        return None

    async def _leases_of(self, process: str) -> dict[int, int]:
        """partition -> epoch of the leases ``process`` holds now."""
        state = self.system.state
        assert state is not None
        conn = await asyncpg.connect(state.database_url)
        try:
            rows = await conn.fetch(
                "SELECT partition, epoch FROM partition_leases WHERE owner = $1",
                f"{socket.gethostname()}-{process}",
            )
        finally:
            await conn.close()
        return {r["partition"]: r["epoch"] for r in rows}

    async def _owned_again(self, held: dict[int, int], deadline: float) -> float | None:
        """When every partition of ``held`` has a live lease with a newer epoch."""
        state = self.system.state
        assert state is not None
        while time.time() < deadline:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                conn = await asyncpg.connect(state.database_url, timeout=1)
                try:
                    rows = await conn.fetch(
                        "SELECT partition, epoch FROM partition_leases"
                        " WHERE partition = ANY($1::int[]) AND owner IS NOT NULL"
                        " AND expires_at > now()",
                        list(held),
                    )
                finally:
                    await conn.close()
                if sum(1 for r in rows if r["epoch"] > held[r["partition"]]) == len(held):
                    return time.time()
            await asyncio.sleep(0.05)
        return None

    async def _back(self, fault: Fault) -> float | None:
        state = self.system.state
        assert state is not None
        deadline = time.time() + 60
        while time.time() < deadline:
            now = self.system.processes().get(fault.process)
            if now is not None and now != fault.pid and await self._answers(fault.process, state):
                return time.time()
            await asyncio.sleep(0.05)
        return None

    async def _answers(self, process: str, state: LocalState) -> bool:
        try:
            if process == "postgres":
                conn = await asyncpg.connect(state.database_url, timeout=1)
                await conn.close()
                return True
            nats = self.system.nats_nodes()
            url = (
                f"{nats[process][1]}/healthz"
                if process in nats
                else f"{state.services[process].health_url}/readyz"
            )
            async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                return resp.status == 200
        except (OSError, TimeoutError, KeyError, aiohttp.ClientError, asyncpg.PostgresError):
            return False


def longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch in [start, end] with nothing in ``times``."""
    inside = sorted(t for t in times if start <= t <= end)
    edges = [start, *inside, end]
    return max(b - a for a, b in itertools.pairwise(edges))


def fault_report(
    plan: list[Fault], loaded: LoadResult, arrivals: list[Arrival]
) -> list[dict[str, Any]]:
    sends = [a.at for a in arrivals]
    out = []
    for f in plan:
        if not f.killed_at:
            continue
        window = (f.killed_at, f.killed_at + 15)
        out.append({
            "target": f.process, "offset_s": round(f.offset, 2), "pid": f.pid,
            "back_after_s": f.back_after, "partitions_owned_after_s": f.owned_after,
            "accept_gap_s": longest_gap(loaded.accepted_at, *window),
            "send_gap_s": longest_gap(sends, *window),
        })  # fmt: skip
    return out


async def end_states(url: str, run: str) -> dict[str, list[str]]:
    """cart id -> the statuses of its journey instances."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT unique_value, status FROM journey_instances"
            " WHERE journey = $1 AND unique_value LIKE $2",
            JOURNEY,
            f"c-{run}-%",
        )
    finally:
        await conn.close()
    found: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        found[row["unique_value"]].append(row["status"])
    return found


async def diagnose(url: str, problems: dict[str, Any]) -> dict[str, list[str]]:
    """What the delivery ledger says of the first carts with a problem: each delivery's step,
    status and reason, so a wrong send can be followed to its cause."""
    carts = []
    for problem in problems.values():
        for example in problem["examples"]:
            if (cart_id := example.split()[0]) not in carts:
                carts.append(cart_id)
    conn = await asyncpg.connect(url)
    try:
        found: dict[str, list[str]] = {}
        for cart_id in carts[:6]:
            rows = await conn.fetch(
                "SELECT step_id, status, reason, attempts, created_at, sent_at FROM delivery_ledger"
                " WHERE profile_id = $1 ORDER BY created_at",
                "u-" + cart_id.removeprefix("c-"),
            )
            found[cart_id] = [
                f"{r['step_id']} {r['status']} ({r['reason'] or '-'}; attempts {r['attempts']};"
                f" created {r['created_at']:%H:%M:%S.%f}, sent {r['sent_at'] or '-'})"
                for r in rows
            ] or ["no delivery in the ledger"]
        return found
    finally:
        await conn.close()


def expected_state(c: Any) -> list[str]:
    if c.zero_value:
        return []
    return ["exited"] if c.reaction == "order" else ["completed"]


# ---- one measured run ----------------------------------------------------------------------------


class Arrival(msgspec.Struct, array_like=True):
    channel: str
    cart_id: str
    at: float
    delivery_id: str


def percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    s = sorted(values)

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))]

    return {"p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": s[-1], "min": s[0],
            "n": float(len(s))}  # fmt: skip


@dataclass
class Bench:
    args: argparse.Namespace
    system: System
    customers_url: str
    http: aiohttp.ClientSession
    extra_pids: dict[str, int]

    async def progress(self) -> dict[str, Any]:
        async with self.http.get(f"{self.customers_url}/progress") as resp:
            result: dict[str, Any] = await resp.json()
            return result

    async def arrivals(self) -> list[Arrival]:
        async with self.http.get(f"{self.customers_url}/arrivals") as resp:
            return msgspec.json.decode(await resp.read(), type=list[Arrival])

    async def idle_cpu(self, seconds: float) -> dict[str, float]:
        """Share of one core each process uses while no event arrives."""
        pids = self.system.processes()
        before = {n: tree_cpu(p) for n, p in pids.items()}
        await asyncio.sleep(seconds)
        return {n: (tree_cpu(p) - before[n]) / seconds for n, p in pids.items()}

    async def measure(self, run: str, carts: int, rate: float) -> dict[str, Any]:
        args, state = self.args, self.system.state
        assert state is not None
        expected_total = sum(len(cart(args.seed, run, i).expected()) for i in range(carts))
        before_arrivals = sum((await self.progress())["arrivals"].values())
        out = self.system.home / f"load-{run}.json"
        load_cmd = [
            sys.executable, str(HERE / "load.py"), "--url", state.tracking_url,
            "--write-key", state.write_key or "", "--run", run, "--carts", str(carts),
            "--rate", str(rate), "--carts-per-batch", str(args.carts_per_batch),
            "--connections", str(args.connections), "--seed", str(args.seed), "--out", str(out),
        ]  # fmt: skip
        db_before = await database_counters(state.database_url)
        nats_before = await nats_counters(self.http, state.nats_monitor_url)
        log_offset = self.system.log.stat().st_size
        letters_before = await self.dead_letters()
        load = spawn(load_cmd)
        profiles = (
            start_profiles(self.system.processes(), self.system.home, carts / rate if rate else 30)
            if args.profile
            else {}
        )
        meter = Meter(lambda: {**self.system.processes(), **self.extra_pids})
        meter.begin()
        plan = (
            fault_plan(args.seed, args.kills, carts / rate, args.fault_targets)
            if args.faults and rate > 0
            else []
        )
        faulting = asyncio.create_task(Faults(self.system, self.http, plan).run(time.time()))
        say(f"run {run}: {carts} carts at {'full speed' if rate <= 0 else f'{rate:g}/s'}")
        while load.poll() is None:
            await asyncio.sleep(0.2)
        await faulting
        loaded = msgspec.json.decode(out.read_bytes(), type=LoadResult)
        last_sent = max(loaded.sent_at.values(), default=time.time())
        tail = args.within + args.pause + 1.0
        hard_stop = time.time() + tail + args.settle_timeout
        seen, quiet_since = -1, time.monotonic()
        while time.time() < hard_stop:
            prog = await self.progress()
            now_seen = sum(prog["arrivals"].values()) - before_arrivals
            if now_seen != seen:
                seen, quiet_since = now_seen, time.monotonic()
            if time.time() > last_sent + tail and prog["pending_reactions"] == 0:
                if now_seen >= expected_total and time.monotonic() - quiet_since > 1.0:
                    break
                if time.monotonic() - quiet_since > args.quiet:
                    break
            await asyncio.sleep(0.25)
        await meter.end()
        meter.cpu["client"], meter.peak_mb["client"] = loaded.cpu_s, loaded.peak_mb
        await asyncio.sleep(1.5)  # PostgreSQL's backends report their counters within a second
        db_after = await database_counters(state.database_url)
        nats_after = await nats_counters(self.http, state.nats_monitor_url)
        runs_arrivals = [a for a in await self.arrivals() if parse_cart_id(a.cart_id)[0] == run]
        logs = self.system.log.read_bytes()[log_offset:].decode(errors="replace")
        async with self.http.get(f"{self.customers_url}/reactions") as resp:
            reacted: dict[str, float] = await resp.json()
        result = analyse(
            args, run, carts, rate, loaded, runs_arrivals, meter, db_before, db_after,
            nats_before, nats_after, log_warnings(logs), reacted,
        )  # fmt: skip
        states = await end_states(state.database_url, run)
        wrong = []
        late = set(result["after_late_reaction"]["carts"])
        for i in range(carts):
            c = cart(args.seed, run, i)
            if c.cart_id in late and states.get(c.cart_id) == ["completed"]:
                continue  # its order came after its push: the journey had ended
            if sorted(states.get(c.cart_id, [])) != expected_state(c):
                wrong.append(f"{c.cart_id} {states.get(c.cart_id, [])} ({c.reaction})")
        result["problems"]["wrong_end_state"] = {"count": len(wrong), "examples": wrong[:5]}
        result["correct"] = result["correct"] and not wrong
        result["dead_letters"] = await self.dead_letters() - letters_before
        result["diagnosis"] = await diagnose(state.database_url, result["problems"])
        if profiles:
            await asyncio.sleep(2.0)  # py-spy writes its file when its duration ends
            result["profile"] = {name: profile_top(path) for name, path in profiles.items()}
        if plan:
            result["faults"] = fault_report(plan, loaded, runs_arrivals)
            result["fault_run_passed"] = fault_run_passed(result)
        return result

    async def dead_letters(self) -> int:
        state = self.system.state
        assert state is not None
        token = (self.system.home / "admin-token").read_text().strip()
        async with self.http.get(
            f"{state.admin_url}/v1/dead-letters?limit=1",
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            return int((await resp.json()).get("total", 0))


def analyse(
    args: argparse.Namespace,
    run: str,
    carts: int,
    rate: float,
    loaded: LoadResult,
    arrivals: list[Arrival],
    meter: Meter,
    db_before: dict[str, int],
    db_after: dict[str, int],
    nats_before: dict[str, int],
    nats_after: dict[str, int],
    warnings: dict[str, Any],
    reacted: dict[str, float] | None = None,
) -> dict[str, Any]:
    got: dict[str, dict[str, list[Arrival]]] = defaultdict(lambda: defaultdict(list))
    for a in sorted(arrivals, key=lambda a: a.at):
        got[a.cart_id][a.channel].append(a)
    missing: list[str] = []
    duplicates: list[str] = []
    unexpected: list[str] = []
    out_of_order: list[str] = []
    email_latency: list[float] = []
    sms_late: list[float] = []
    push_late: list[float] = []
    per_channel: Counter[str] = Counter()
    expected_per_channel: Counter[str] = Counter()
    duplicate_keys: list[dict[str, Any]] = []
    after_late_reaction: list[str] = []
    for i in range(carts):
        c = cart(args.seed, run, i)
        mine = got.get(c.cart_id, {})
        want = c.expected()
        expected_per_channel.update(want)
        firsts = {ch: mine[ch][0].at for ch in mine}
        late = late_sends(c.reaction, (reacted or {}).get(c.cart_id), firsts, args)
        for channel in ("email", "sms", "push"):
            n = len(mine.get(channel, []))
            per_channel[channel] += n
            if channel in want and n == 0:
                missing.append(f"{c.cart_id} {channel} ({c.reaction})")
            elif channel not in want and n and channel in late:
                after_late_reaction.append(f"{c.cart_id} {channel} ({c.reaction})")
            elif channel not in want and n:
                unexpected.append(f"{c.cart_id} {channel} ({c.reaction}, value 0: {c.zero_value})")
            elif n > 1:
                duplicates.append(f"{c.cart_id} {channel} x{n}")
                ids = [a.delivery_id for a in mine[channel]]
                duplicate_keys.append({"cart": c.cart_id, "channel": channel, "delivery_ids": ids})
        if "email" in firsts and c.cart_id in loaded.sent_at:
            email_latency.append(firsts["email"] - loaded.sent_at[c.cart_id])
        if "sms" in firsts and "email" in firsts:
            sms_late.append(firsts["sms"] - (firsts["email"] + args.within))
        if "push" in firsts and "sms" in firsts:
            push_late.append(firsts["push"] - (firsts["sms"] + args.pause))
        order = [firsts[ch] for ch in ("email", "sms", "push") if ch in firsts]
        if order != sorted(order) or ("push" in firsts and "sms" not in firsts):
            out_of_order.append(c.cart_id)
    load_seconds = max(loaded.finished - loaded.started, 1e-9)
    minutes = per_minute(loaded, got, meter) if args.soak else None
    emails = [a.at for a in arrivals if a.channel == "email"]
    keep_up = len(emails) / max(max(emails) - loaded.started, 1e-9) if emails else 0.0
    cpu_total = sum(meter.cpu.values())
    entered = max(db_after["instances"] - db_before["instances"], 1)
    correct = not (missing or duplicates or unexpected or out_of_order) and (
        loaded.failed_requests == 0
    )
    problems = {
        "missing": missing, "duplicates": duplicates, "unexpected": unexpected,
        "out_of_order": out_of_order,
    }  # fmt: skip
    return {
        "run": run,
        "carts": carts,
        "offered_rate": rate or None,
        "jetstream_sync": args.current_sync,
        "within_s": args.within,
        "pause_s": args.pause,
        "events_per_s_accepted": loaded.accepted_events / load_seconds,
        "carts_per_s_offered": carts / load_seconds,
        "carts_per_s_kept_up": keep_up,
        "requests": {"failed": loaded.failed_requests, "retried": loaded.retried_requests},
        "accept_latency_s": percentiles(loaded.accept_latency),
        "event_to_email_s": percentiles(email_latency),
        "sms_lateness_s": percentiles(sms_late),
        "push_lateness_s": percentiles(push_late),
        "correct": correct,
        "sends": {"got": dict(per_channel), "expected": dict(expected_per_channel)},
        "problems": {
            name: {"count": len(items), "examples": items[:5]} for name, items in problems.items()
        },
        "after_late_reaction": {
            "count": len(after_late_reaction),
            "examples": after_late_reaction[:5],
            "carts": sorted({e.split()[0] for e in after_late_reaction}),
        },
        "duplicate_delivery_ids": duplicate_keys[:20],
        "wall_s": meter.wall,
        "cpu_s": meter.cpu,
        "cpu_s_total": cpu_total,
        "cpu_ms_per_cart": 1000 * cpu_total / carts,
        "cores_used": cpu_total / max(meter.wall, 1e-9),
        "peak_mb": meter.peak_mb,
        "postgres": {
            "transactions_per_cart": (db_after["xact_commit"] - db_before["xact_commit"]) / carts,
            "rollbacks_per_cart": (db_after["xact_rollback"] - db_before["xact_rollback"]) / carts,
            "deadlocks": db_after["deadlocks"] - db_before["deadlocks"],
            "instances": entered,
            "bytes_per_1000_instances": 1000 * (db_after["size"] - db_before["size"]) / entered,
        },
        "jetstream": {
            "stored_bytes_per_cart": (nats_after["stored_bytes"] - nats_before["stored_bytes"])
            / carts,
            "nats_in_bytes_per_cart": (nats_after["in_bytes"] - nats_before["in_bytes"]) / carts,
            "nats_in_msgs_per_cart": (nats_after["in_msgs"] - nats_before["in_msgs"]) / carts,
        },
        "log_warnings": warnings,
        **({"per_minute": minutes, "drift": drift(minutes)} if minutes else {}),
    }


def per_minute(
    loaded: LoadResult, got: dict[str, dict[str, list[Arrival]]], meter: Meter
) -> list[dict[str, Any]]:
    """Each minute of the load: carts sent, event->email percentiles of those carts, and the
    RSS of every process (MB, replicas summed) at the minute's last sample."""
    latency: dict[int, list[float]] = defaultdict(list)
    sent: Counter[int] = Counter()
    for cart_id, at in loaded.sent_at.items():
        minute = int((at - loaded.started) // 60)
        sent[minute] += 1
        if emails := got.get(cart_id, {}).get("email"):
            latency[minute].append(emails[0].at - at)
    rows = []
    for minute in sorted(sent):
        end = loaded.started + 60 * (minute + 1)
        rss = next((mb for t, mb in reversed(meter.series) if t <= end), {})
        rows.append({"minute": minute + 1, "carts": sent[minute],
                     "event_to_email_s": percentiles(latency[minute]), "rss_mb": rss})  # fmt: skip
    return rows


def drift(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether the soak stayed flat: each process's RSS growth per minute after the first two
    (warm-up) by least squares, and p99 event->email of the first and last full minute."""
    steady = [r for r in rows[2:-1] if r["rss_mb"]] or rows
    xs = [float(r["minute"]) for r in steady]
    slope: dict[str, float] = {}
    for name in steady[0]["rss_mb"] if steady else []:
        ys = [r["rss_mb"].get(name, 0.0) for r in steady]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        slope[name] = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if (
            var) else 0.0  # fmt: skip
    full = [r for r in rows[:-1] if r["event_to_email_s"]]
    return {
        "rss_mb_per_minute": slope,
        "p99_first_s": full[0]["event_to_email_s"]["p99"] if full else None,
        "p99_last_s": full[-1]["event_to_email_s"]["p99"] if full else None,
    }


def late_sends(
    reaction: str, accepted: float | None, firsts: dict[str, float], args: argparse.Namespace
) -> set[str]:
    """The follow-ups a customer's open or order no longer stops because Cairn accepted it only
    after the wait had ended: its requests were refused (503, retried) while the system could not
    store them. The wait ends at the email's request + T, before its arrival + T; Cairn cannot
    act on an event it has not accepted, so these sends are right. An open or order Cairn
    answered 200 to in time (a tracking hit ingest held back, say) explains nothing."""
    if accepted is None or "email" not in firsts or accepted <= firsts["email"] + args.within:
        return set()
    if reaction == "open":
        return {"sms", "push"}  # an open stops nothing after its wait
    if "sms" in firsts and accepted > firsts["sms"] + args.pause:
        return {"sms", "push"}
    return {"sms"}


def fault_run_passed(result: dict[str, Any]) -> bool:
    """Nothing missing, nothing for an exited instance, no later step before an earlier one,
    every instance in its expected end state, every fault recovered from, and duplicates only as
    repeats of one delivery (the same idempotency key: a crash between the provider call and the
    ledger write)."""
    problems = result["problems"]
    if any(problems[k]["count"] for k in ("missing", "unexpected", "out_of_order",
                                          "wrong_end_state")):  # fmt: skip
        return False
    if any(f["back_after_s"] is None for f in result["faults"]):
        return False
    if result["requests"]["failed"]:
        return False
    return all(len(set(d["delivery_ids"])) == 1 and d["delivery_ids"][0]
               for d in result["duplicate_delivery_ids"])  # fmt: skip


def passed(result: dict[str, Any]) -> bool:
    latency = result["event_to_email_s"]
    return bool(result["correct"]) and latency is not None and latency["p99"] < P99_TARGET


# ---- the report ----------------------------------------------------------------------------------


def _ms(p: dict[str, float] | None) -> str:
    if p is None:
        return "-"
    return (f"p50 {p['p50'] * 1000:7.1f}  p99 {p['p99'] * 1000:7.1f}  max {p['max'] * 1000:7.1f}"
            f"  min {p['min'] * 1000:7.1f} ms")  # fmt: skip


def show(result: dict[str, Any]) -> None:
    rate = result["offered_rate"]
    lines = [
        f"== run {result['run']}: {result['carts']} carts "
        f"{'as fast as accepted' if rate is None else f'at {rate:g}/s'}, "
        f"JetStream sync {result['jetstream_sync']}, T {result['within_s']:g} s, "
        f"T2 {result['pause_s']:g} s",
        f"accepted           {result['events_per_s_accepted']:8.0f} events/s "
        f"({result['carts_per_s_offered']:.0f} carts/s offered; "
        f"failed requests {result['requests']['failed']}, retried {result['requests']['retried']})",
        f"kept up with       {result['carts_per_s_kept_up']:8.0f} carts/s (emails out / time)",
        f"accept latency     {_ms(result['accept_latency_s'])}",
        f"event -> email     {_ms(result['event_to_email_s'])}",
        f"SMS lateness       {_ms(result['sms_lateness_s'])}   (vs email arrival + T)",
        f"push lateness      {_ms(result['push_lateness_s'])}   (vs SMS arrival + T2)",
        f"sends              got {result['sends']['got']}  expected {result['sends']['expected']}",
        f"correct            {'yes' if result['correct'] else 'NO'}  "
        + "  ".join(f"{k} {v['count']}" for k, v in result["problems"].items()),
    ]
    for name, problem in result["problems"].items():
        if problem["count"]:
            lines.append(f"  {name}: {', '.join(problem['examples'])}")
    if late := result["after_late_reaction"]["count"]:
        lines.append(
            f"  right, after a late reaction: {late} follow-ups to customers whose open or order"
            " Cairn accepted only after the wait had ended (refused while it could not store"
            f" them, retried): {', '.join(result['after_late_reaction']['examples'])}"
        )
    pg = result["postgres"]
    js = result["jetstream"]
    lines += [
        f"CPU                {result['cpu_s_total']:.1f} s in {result['wall_s']:.1f} s "
        f"({result['cores_used']:.2f} cores), {result['cpu_ms_per_cart']:.2f} ms per cart",
        "  " + "  ".join(f"{k} {v:.1f}" for k, v in sorted(result["cpu_s"].items(),
                                                           key=lambda kv: -kv[1])),
        "peak memory MB     " + "  ".join(f"{k} {v:.0f}" for k, v in result["peak_mb"].items()),
        f"PostgreSQL         {pg['transactions_per_cart']:.1f} transactions/cart, "
        f"{pg['rollbacks_per_cart']:.2f} rollbacks/cart, {pg['deadlocks']} deadlocks, "
        f"{pg['bytes_per_1000_instances'] / 1e6:.2f} MB per 1,000 instances",
        f"JetStream          {js['stored_bytes_per_cart']:.0f} stored bytes/cart, "
        f"NATS in {js['nats_in_bytes_per_cart']:.0f} bytes and {js['nats_in_msgs_per_cart']:.1f}"
        " messages per cart",
    ]  # fmt: skip
    lines.append(f"dead letters       {result.get('dead_letters', 0)}")
    for cart_id, ledger in result.get("diagnosis", {}).items():
        lines.append(f"ledger of {cart_id}: " + " | ".join(ledger))
    for who, w in result["log_warnings"].items():
        lines.append(f"log warnings       {who}: {w['total']}  {w['top']}")
    for f in result.get("faults", []):
        back = "never" if f["back_after_s"] is None else f"{f['back_after_s']:.2f} s"
        owned = f.get("partitions_owned_after_s")
        lines.append(
            f"fault  +{f['offset_s']:6.1f} s  SIGKILL {f['target']:<12} back {back:>8}  "
            f"longest gap: accepts {f['accept_gap_s']:.2f} s, sends {f['send_gap_s']:.2f} s"
            + ("" if owned is None else f"; partitions owned again after {owned:.2f} s")
        )
    for name, top in result.get("profile", {}).items():
        lines.append(f"profile {name}: " + "; ".join(f"{100 * share:.1f}% {frame}"
                                                    for frame, share in top))  # fmt: skip
    if rows := result.get("per_minute"):
        names = sorted(rows[-1]["rss_mb"])
        lines.append("minute  carts  e->email p50   p99 ms   RSS MB " + " ".join(
            f"{n[:9]:>9}" for n in names))  # fmt: skip
        for r in rows:
            lat = r["event_to_email_s"] or {"p50": float("nan"), "p99": float("nan")}
            lines.append(
                f"{r['minute']:6d} {r['carts']:6d} {lat['p50'] * 1000:13.1f} "
                f"{lat['p99'] * 1000:8.1f}        "
                + " ".join(f"{r['rss_mb'].get(n, 0.0):9.0f}" for n in names)
            )
        d = result["drift"]
        lines.append("RSS drift MB/min   " + "  ".join(
            f"{k} {v:+.2f}" for k, v in d["rss_mb_per_minute"].items()))  # fmt: skip
    if "fault_run_passed" in result:
        lines.append(f"FAULT RUN {'PASSED' if result['fault_run_passed'] else 'FAILED'}")
    print("\n".join(lines), flush=True)


# ---- main ----------------------------------------------------------------------------------------


async def session(args: argparse.Namespace, sync: str) -> dict[str, Any]:
    args.current_sync = sync
    with contextlib.ExitStack() as cleanup:
        tmp = tempfile.mkdtemp(prefix="cairn-e2e-")
        if not args.keep:
            cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
        home = Path(tmp) / "cairn"
        system = System(home, sync, cluster=args.cluster)
        customers: subprocess.Popen[bytes] | None = None
        try:
            say(f"starting the system (cairn up, JetStream sync {sync}) in {home}")
            state = system.start()
            smtp_port, http_port = free_port(), free_port()
            customers = spawn(
                [sys.executable, str(HERE / "customers.py"), "--smtp-port", str(smtp_port),
                 "--http-port", str(http_port), "--tracking-url", state.tracking_url,
                 "--write-key", state.write_key or "", "--seed", str(args.seed)],
                stdout=subprocess.PIPE,
            )  # fmt: skip
            assert customers.stdout is not None
            if customers.stdout.readline().strip() != b"ready":
                raise SystemExit("customers.py did not start")
            docs = home / "e2e.yaml"
            docs.write_text(documents(smtp_port, http_port, args.within, args.pause))
            system.cli("apply", "-f", str(docs))
            for template in TEMPLATES:
                system.cli("templates", "ready", template)
            system.cli("publish", JOURNEY)
            await asyncio.sleep(2.0)  # the matcher hears of the new version (LISTEN/NOTIFY)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
                bench = Bench(
                    args, system, f"http://127.0.0.1:{http_port}", http,
                    {"customers": customers.pid},
                )  # fmt: skip
                report: dict[str, Any] = {"jetstream_sync": sync}
                if args.idle_seconds > 0:
                    idle = await bench.idle_cpu(args.idle_seconds)
                    report["idle_cores"] = idle
                    say(f"idle: {100 * sum(idle.values()):.1f} % of one core "
                        + "  ".join(f"{k} {100 * v:.1f}" for k, v in idle.items()))  # fmt: skip
                report["runs"] = await runs(args, bench)
                return report
        finally:
            if customers is not None:
                customers.terminate()
                customers.wait(10)
            system.stop()


async def runs(args: argparse.Namespace, bench: Bench) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []

    async def one(rate: float, carts: int) -> dict[str, Any]:
        result = await bench.measure(uuid.uuid4().hex[:8], carts, rate)
        show(result)
        results.append(result)
        return result

    if not args.ladder:
        carts = args.carts or (20_000 if args.rate <= 0 else int(args.rate * args.seconds))
        await one(args.rate, carts)
        return results
    good, bad, rate = 0.0, 0.0, args.ladder_start
    while rate <= args.ladder_max:
        if passed(await one(rate, int(rate * args.seconds))):
            good, rate = rate, rate * 2
        else:
            bad = rate
            break
    for _ in range(args.ladder_steps if bad else 0):
        rate = round((good + bad) / 2)
        if rate in (good, bad):
            break
        if passed(await one(rate, int(rate * args.seconds))):
            good = rate
        else:
            bad = rate
    say(f"ladder: highest rate with p99 event->email < {P99_TARGET * 1000:.0f} ms and every send"
        f" right: {good:g} carts/s" + (f" (failed at {bad:g})" if bad else ""))  # fmt: skip
    return results


def duration(value: str) -> float:
    """``90s``, ``30m``, ``1h`` (or plain seconds) as seconds."""
    match = re.fullmatch(r"([0-9.]+)(s|m|h)?", value)
    if match is None:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a duration such as 90s, 30m, 1h")
    return float(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2] or "s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--carts", type=int, help="carts per run (default 20,000; rate x --seconds)")
    p.add_argument("--rate", type=float, default=0.0, help="carts/s; 0: as fast as accepted")
    p.add_argument(
        "--seconds", type=float, help="length of a fixed-rate run (60; 120 with --faults)"
    )
    p.add_argument(
        "--faults", action="store_true",
        help="SIGKILL every service --kills times, NATS and PostgreSQL once, during the load",
    )  # fmt: skip
    p.add_argument("--kills", type=int, default=2, help="SIGKILLs of each service (--faults)")
    p.add_argument(
        "--fault-targets", type=lambda v: v.split(","),
        help="only these, --kills times each (e.g. nats,matcher)",
    )  # fmt: skip
    p.add_argument(
        "--cluster", action="store_true",
        help="scaled out: 3 NATS nodes (R3 streams), 2 matchers, 2 dispatchers; with --faults, "
        "SIGKILL the inputs stream's leader node and one replica of each",
    )  # fmt: skip
    p.add_argument(
        "--soak", type=duration, metavar="DURATION",
        help="e.g. 30m: --rate (default 75, half the sustained rate) for this long, with a "
        "per-minute table of latency and every process's memory",
    )  # fmt: skip
    p.add_argument("--ladder", action="store_true", help="find the highest rate that keeps up")
    p.add_argument("--ladder-start", type=float, default=50.0)
    p.add_argument("--ladder-max", type=float, default=3200.0)
    p.add_argument("--ladder-steps", type=int, default=3, help="bisections after the first miss")
    p.add_argument("--within", type=float, default=10.0, help="T: the wait for the open (s)")
    p.add_argument("--pause", type=float, default=5.0, help="T2: the wait before the push (s)")
    p.add_argument("--carts-per-batch", type=int, default=10)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--idle-seconds", type=float, default=10.0, help="measure idle CPU first")
    p.add_argument("--quiet", type=float, default=10.0, help="stop waiting after this long quiet")
    p.add_argument("--settle-timeout", type=float, default=120.0)
    p.add_argument(
        "--jetstream-sync", default="always", help="always | default | both (one system each)"
    )
    p.add_argument("--out", default="e2e-report.json", help="where the JSON report goes")
    p.add_argument("--keep", action="store_true", help="keep the data folder (logs, databases)")
    p.add_argument("--profile", action="store_true", help="sample each service with py-spy")
    args = p.parse_args()
    if args.soak:
        args.rate = args.rate or 75.0
        args.seconds = args.soak
    if args.faults and args.cluster and args.fault_targets is None:
        args.fault_targets = ["nats", "matcher", "dispatcher"]
    if args.faults and args.rate <= 0:
        args.rate = 30.0
    if args.seconds is None:
        args.seconds = 120.0 if args.faults else 60.0
    policies = ["always", "default"] if args.jetstream_sync == "both" else [args.jetstream_sync]
    reports = [asyncio.run(session(args, sync)) for sync in policies]
    Path(args.out).write_text(json.dumps({"argv": sys.argv[1:], "sessions": reports}, indent=2))
    say(f"report written to {args.out}")
    verdicts = [r.get("fault_run_passed") for s in reports for r in s["runs"]]
    if False in verdicts:
        sys.exit(1)


if __name__ == "__main__":
    main()
