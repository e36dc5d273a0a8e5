"""A destination function reaches only what it was given (issue 11, item 2, holes a to d).

Holes a and b: top-level ``while (true) {}`` froze the dispatcher's event loop (``/healthz``
timed out, SIGTERM was ignored), and ArrayBuffers, which V8's heap limit does not count, took
the dispatcher from 124 MB to 1.17 GB. A function now runs in a worker process of its own
(decision 0054): the dispatcher keeps the clock and kills the worker, and the worker's data
limit refuses the buffers, so the dispatcher stays responsive and small.

The issue's cases: an allowed host answering 302 let a function read the admin API on 127.0.0.1
(``fetch`` followed redirects), and a function's settings could reference any environment
variable of the dispatcher (``{env: CAIRN_ADMIN_TOKEN}``, the database URL, the tracking secret),
which it returned and which then landed in ``delivery_ledger.reason``. Through a real dispatcher
and a real HTTP server on loopback: every redirect hop is checked again (a hop to a host not
allowed, or to an address the egress policy refuses, is an error in the function, and nothing
arrives there); only function secrets can be read; a function that throws its own secret leaves
``[redacted]`` in the ledger; the neighbour function in the same batch is delivered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from cairn_cli.local import cpu_seconds, memory_mb
from cairn_common.bus import provision_topology
from cairn_common.topology import Topology
from tests.dispatcher.support import (
    LOOPBACK,
    HttpSink,
    Reply,
    Results,
    apply,
    delivery,
    eventually,
    ledger,
    send_requests,
)
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.e2e

FETCH = """
async function onTrack(event, settings) {
  const res = await fetch(settings.url);
  return await res.text();
}
"""
THROW_SECRET = """
async function onTrack(event, settings) { throw new Error('key is ' + settings.apiKey); }
"""
RETURN_SETTING = """
async function onTrack(event, settings) { throw new Error('got ' + settings.stolen); }
"""


async def test_redirects_are_checked_hop_by_hop_and_only_function_secrets_are_read(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    port = sink.port
    sink.routes["/to-localhost"] = Reply(302, "", {"Location": f"http://localhost:{port}/admin"})
    sink.routes["/hop-ok"] = Reply(302, "", {"Location": "/final"})
    sink.routes["/final"] = Reply(200, "arrived")
    sink.routes["/loop"] = Reply(302, "", {"Location": "/loop"})
    allowed = {"allowed_hosts": ["127.0.0.1"], "allow_networks": LOOPBACK}
    functions = {
        # First hop allowed; the redirect goes to a host the function was not given.
        "to-localhost": {**allowed, "url": f"{sink.url}/to-localhost"},
        "redirect-loop": {**allowed, "url": f"{sink.url}/loop"},
        # The host is allowed by name, but the egress policy refuses loopback without
        # allow_networks: the admin API on 127.0.0.1 is out of reach.
        "no-networks": {"allowed_hosts": ["127.0.0.1"], "url": f"{sink.url}/admin"},
        "neighbour": {**allowed, "url": f"{sink.url}/hop-ok"},
    }
    for name, options in functions.items():
        await apply(
            db, "Destination", name, {"provider": "function", "function": FETCH, "options": options}
        )
    outside = tmp_path / "outside"
    outside.write_text("not for functions")
    secrets_dir = tmp_path / "function-secrets"
    secrets_dir.mkdir()
    (secrets_dir / "escape").symlink_to(outside)
    stolen = {
        "admin-token": {"env": "CAIRN_ADMIN_TOKEN"},
        "database-url": {"env": "CAIRN_DATABASE_URL"},
        "proc-environ": {"file": "/proc/self/environ"},
        "dot-dot": {"file": f"{secrets_dir}/../outside"},
        "symlink": {"file": str(secrets_dir / "escape")},
    }
    for name, ref in stolen.items():
        await apply(db, "Destination", name, {
            "provider": "function", "function": RETURN_SETTING, "options": {"stolen": ref},
        })  # fmt: skip
    await apply(db, "Destination", "throws-secret", {
        "provider": "function", "function": THROW_SECRET,
        "options": {"apiKey": {"env": "CAIRN_FUNCTION_SECRET_API_KEY"}},
    })  # fmt: skip
    await start_dispatcher(
        CAIRN_ADMIN_TOKEN="admin-token-of-the-dispatcher",
        CAIRN_FUNCTION_SECRETS_DIR=str(secrets_dir),
    ).wait_ready()
    results = await Results.listen(nc, topology)
    names = [*functions, *stolen, "throws-secret"]
    await send_requests(js, topology, *(delivery(n, destination=n) for n in names))

    await results.wait("neighbour", "sent")  # relative redirect to an allowed host: followed
    expected = {
        "to-localhost": "fetch to 'localhost' is not allowed",
        "redirect-loop": "followed more than 5 redirects",
        "no-networks": "127.0.0.1 is a loopback address",
        "admin-token": "only environment variables named CAIRN_FUNCTION_SECRET_*",
        "database-url": "only environment variables named CAIRN_FUNCTION_SECRET_*",
        "proc-environ": "only files under CAIRN_FUNCTION_SECRETS_DIR",
        "dot-dot": "only files under CAIRN_FUNCTION_SECRETS_DIR",
        "symlink": "only files under CAIRN_FUNCTION_SECRETS_DIR",
        "throws-secret": "function Error: key is [redacted]",
    }
    for name, words in expected.items():
        failed = await results.wait(name, "failed")
        assert failed.reason is not None
        assert words in failed.reason, (name, failed.reason)
        assert failed.attempts == 1, name
        assert "admin-token-of-the-dispatcher" not in failed.reason
        assert "not for functions" not in failed.reason
    stored = await ledger(db, "throws-secret")
    assert stored is not None
    assert "key-123" not in (stored["reason"] or "")
    assert stored["reason"] == "function Error: key is [redacted]"

    paths = [r.path for r in sink.requests]
    assert "/admin" not in paths  # neither by redirect nor directly
    assert paths.count("/loop") == 6  # the first request and five followed hops, then stop
    assert paths.count("/final") == 1


TOP_LEVEL_LOOP = "while (true) {}\nasync function onTrack(event, settings) { return 1; }"
BUFFER_HOG = """
async function onTrack(event, settings) {
  const kept = [];
  while (true) { kept.push(new Uint8Array(16 << 20).fill(1)); }
}
"""
NEIGHBOUR = """
async function onTrack(event, settings) {
  return (await fetch(settings.url + '/' + event.messageId)).status;
}
"""


def _workers(parent: int) -> list[int]:
    """The function workers the dispatcher ``parent`` has started and that are still alive."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"cairn_dispatcher.function_worker" in cmdline:
            found.append(int(entry.name))
    return found


async def test_top_level_loops_and_buffer_hogs_stay_in_their_worker(
    db: asyncpg.Connection,
    sink: HttpSink,
    nc: NATS,
    js: JetStreamContext,
    topology: Topology,
    start_dispatcher: Callable[..., ServiceProcess],
) -> None:
    neighbour = {"allowed_hosts": ["127.0.0.1"], "allow_networks": LOOPBACK, "url": sink.url}
    documents = {
        "top-level-loop": {"provider": "function", "function": TOP_LEVEL_LOOP},
        "buffer-hog": {"provider": "function", "function": BUFFER_HOG},
        "neighbour": {"provider": "function", "function": NEIGHBOUR, "options": neighbour},
    }
    for name, document in documents.items():
        await apply(db, "Destination", name, document)
    await apply(db, "Channel", "webhook", {
        "provider": "webhook", "options": {"allow_networks": LOOPBACK, "url": f"{sink.url}/hook"},
    })  # fmt: skip

    # 1. Published before the dispatcher starts, so they come in one batch. With a time limit
    # longer than the test, the loop spins in its worker while the dispatcher answers its health
    # check, sends the neighbours beside it, and honours SIGTERM.
    await provision_topology(js, topology)
    await send_requests(
        js,
        topology,
        delivery("loop-1", destination="top-level-loop"),
        delivery("fn-1", destination="neighbour"),
        delivery("hook-1", channel="webhook"),
    )
    first = start_dispatcher(CAIRN_FUNCTION_TIMEOUT_SECONDS="600")
    await first.wait_ready()
    assert first.proc is not None

    async def spinning() -> bool:
        return any(cpu_seconds(w) > 1.0 for w in _workers(first.proc.pid))

    await eventually(spinning)
    async with (
        aiohttp.ClientSession() as http,
        asyncio.timeout(5),
        http.get(f"{first.health_url}/healthz") as resp,
    ):
        assert resp.status == 200
    await eventually(lambda: {"/fn-1", "/hook"} <= {r.path for r in sink.requests})
    workers = _workers(first.proc.pid)
    assert workers
    row = await ledger(db, "loop-1")  # still looping: only its claim recorded, nothing sent
    assert row is not None
    assert row["status"] == "sending"
    first.terminate()
    assert await first.wait_exit(timeout=30) == 0
    await eventually(lambda: not any(Path(f"/proc/{w}").exists() for w in workers), timeout=10)

    # 2. With the time limit the tests use (1 s), the loop fails at its load, the buffer hog at
    # its data limit, and the dispatcher's own memory stays where it was: 16 MiB buffers without
    # end took it to 1.17 GB when functions ran inside it.
    second = start_dispatcher(CAIRN_FUNCTION_MEMORY_MB="64")
    await second.wait_ready()
    assert second.proc is not None
    results = await Results.listen(nc, topology)
    await send_requests(
        js,
        topology,
        delivery("loop-2", destination="top-level-loop"),
        delivery("hog-2", destination="buffer-hog"),
        delivery("fn-2", destination="neighbour"),
        delivery("hook-2", channel="webhook"),
    )
    loop = await results.wait("loop-2", "failed")
    assert loop.reason == "function exceeded its 1s time limit"
    hog = await results.wait("hog-2", "failed")
    assert hog.reason == "function exceeded its memory limit"
    await results.wait("fn-2", "sent")
    await results.wait("hook-2", "sent")
    assert "/fn-2" in {r.path for r in sink.requests}
    peak = memory_mb(second.proc.pid, "VmHWM")
    assert peak < 400, f"the dispatcher reached {peak:.0f} MB"
