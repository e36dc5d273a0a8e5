"""Shared fixtures: one real NATS and one real PostgreSQL per test session, isolation per test.

Every test that uses them gets its own database (``CREATE DATABASE``) and its own NATS namespace
(streams and subjects prefixed), so tests never see each other's data and may run in any order.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from cairn_cli.local import LocalNats, LocalPostgres
from cairn_common.topology import Topology
from tests.support.processes import ServiceProcess


def pytest_configure(config: pytest.Config) -> None:
    """A temp root of this session's own. pytest's default root is shared by every session of the
    user and keeps only the newest three, so concurrent sessions on one machine (CI beside a
    developer, several worktrees) would delete each other's live PostgreSQL data directory."""
    if not config.option.basetemp:
        config.option.basetemp = tempfile.mkdtemp(prefix="cairn-pytest-")
        config.stash[_OWN_BASETEMP] = config.option.basetemp


def pytest_unconfigure(config: pytest.Config) -> None:
    own = config.stash.get(_OWN_BASETEMP, None)
    if own:
        shutil.rmtree(own, ignore_errors=True)


_OWN_BASETEMP = pytest.StashKey[str]()


class Servers:
    def __init__(self, nats_server: LocalNats, pg: LocalPostgres) -> None:
        self.nats = nats_server
        self.pg = pg

    @property
    def nats_url(self) -> str:
        return self.nats.url


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("servers")
    nats_server = LocalNats(root / "nats")
    pg = LocalPostgres(root / "pg", fsync=False)
    nats_server.start(log_file=root / "nats.log")
    try:
        pg.start(log_file=root / "pg.log")
        yield Servers(nats_server, pg)
    finally:
        pg.stop()
        nats_server.stop()


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


STREAM_LIMITS = {
    "inputs_max_bytes": 32 << 20,
    "deliveries_max_bytes": 16 << 20,
    "dead_letters_max_bytes": 4 << 20,
}
"""Small stream bounds for tests: every stream reserves its bound from JetStream's storage budget
when created, and a session creates a few hundred namespaces."""


@pytest.fixture
def topology(namespace: str) -> Topology:
    return Topology(namespace, **STREAM_LIMITS)


@pytest.fixture
async def database_url(servers: Servers) -> AsyncIterator[str]:
    """A fresh, empty database for this test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(servers.pg.url())
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await admin.close()
    yield servers.pg.url(name)
    admin = await asyncpg.connect(servers.pg.url())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def nc(servers: Servers) -> AsyncIterator[NATS]:
    client = await nats.connect(servers.nats_url)
    yield client
    await client.close()


@pytest.fixture
def js(nc: NATS) -> JetStreamContext:
    return nc.jetstream()


@pytest.fixture
def service_env(servers: Servers, database_url: str, namespace: str) -> dict[str, str]:
    """The CAIRN_* environment a service process of this test runs with."""
    return {
        "CAIRN_NATS_URL": servers.nats_url,
        "CAIRN_DATABASE_URL": database_url,
        "CAIRN_NAMESPACE": namespace,
        "CAIRN_SHUTDOWN_GRACE_SECONDS": "10",
        **{f"CAIRN_{name.upper()}": str(value) for name, value in STREAM_LIMITS.items()},
    }


@pytest.fixture
def spawn(
    service_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., ServiceProcess]]:
    """Start a service as a real process; every one started is stopped after the test, and its
    output is attached to the test report when the test fails."""
    started: list[ServiceProcess] = []

    def start(module: str, **env: str) -> ServiceProcess:
        proc = ServiceProcess(module, {**service_env, **env}, tmp_path).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for proc in started:
            print(f"\n----- {proc.module} output -----\n{proc.output()[-4000:]}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
