"""A destination function reaches only what it was given (issue 11, item 2, holes c and d).

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

from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from cairn_common.topology import Topology
from tests.dispatcher.support import (
    LOOPBACK,
    HttpSink,
    Reply,
    Results,
    apply,
    delivery,
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
