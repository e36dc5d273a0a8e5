"""The admin API in-process on a random port, over a fresh database and NATS namespace."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from nats.js.client import JetStreamContext

from cairn_common.bus import provision_topology
from cairn_common.db import create_pool, migrate
from cairn_common.topology import Topology
from cairn_control import admin_app

TOKEN = "test-admin-token"
PARTITIONS = 8
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


class Admin:
    """A running admin API and a client for it."""

    def __init__(
        self, url: str, pool: asyncpg.Pool, http: aiohttp.ClientSession, database_url: str
    ) -> None:
        self.url = url
        self.database_url = database_url
        self.pool = pool
        self.http = http

    async def call(
        self, method: str, path: str, body: Any = None, *, token: str | None = TOKEN
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with self.http.request(
            method, f"{self.url}{path}", json=body, headers=headers
        ) as resp:
            return resp.status, await resp.json()

    async def apply_files(self, *paths: Path) -> tuple[int, Any]:
        documents = []
        for path in paths:
            files = sorted(path.rglob("*.yaml")) if path.is_dir() else [path]
            documents += [
                {"source": str(f.relative_to(ROOT)), "text": f.read_text()} for f in files
            ]
        return await self.call("POST", "/v1/apply", {"documents": documents})

    async def apply_text(self, text: str, source: str = "test.yaml") -> tuple[int, Any]:
        documents = [{"source": source, "text": text}]
        return await self.call("POST", "/v1/apply", {"documents": documents})

    async def ready_all_templates(self) -> None:
        status, body = await self.call("GET", "/v1/templates")
        assert status == 200, body
        for template in body["templates"]:
            status, answer = await self.call("POST", f"/v1/templates/{template['name']}/ready")
            assert status == 200, answer


@pytest.fixture
async def admin(
    database_url: str, js: JetStreamContext, topology: Topology
) -> AsyncIterator[Admin]:
    await migrate(database_url)
    await provision_topology(js, topology)
    pool = await create_pool(database_url, min_size=1, max_size=4)
    runner = web.AppRunner(admin_app(pool, js, topology, TOKEN, partitions=PARTITIONS))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as http:
        yield Admin(f"http://127.0.0.1:{port}", pool, http, database_url)
    await runner.cleanup()
    await pool.close()


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code = code
        self.out = out
        self.err = err

    def __repr__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


async def run_cli(
    *args: str, api: str | None = None, token: str = TOKEN, cwd: Path = ROOT
) -> CliResult:
    """``cairn ARGS`` as a real process (without blocking the loop that serves the API)."""
    env = {**os.environ, "CAIRN_API_TOKEN": token, "CAIRN_DATA_DIR": str(cwd / ".no-cairn-data")}
    env.pop("CAIRN_API_URL", None)
    if api is not None:
        env["CAIRN_API_URL"] = api
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cairn_cli", *args,
        cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())
