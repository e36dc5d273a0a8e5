"""The ingest process serves the admin API on its own listener, behind the bearer token."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from cairn_cli.local import free_port
from tests.support.processes import ServiceProcess


async def test_ingest_serves_the_admin_api_on_its_own_port(
    spawn: Callable[..., ServiceProcess],
) -> None:
    port = free_port()
    ingest = spawn(
        "cairn_ingest",
        CAIRN_ADMIN_PORT=str(port),
        CAIRN_ADMIN_TOKEN="s3cret",
        CAIRN_HTTP_PORT=str(free_port()),
    )
    await ingest.wait_ready()
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/v1/journeys") as resp:
            assert resp.status == 401
        headers = {"Authorization": "Bearer s3cret"}
        async with http.get(f"{url}/v1/journeys", headers=headers) as resp:
            assert resp.status == 200
            assert await resp.json() == {"journeys": []}
        async with http.get(f"{url}/openapi.json") as resp:
            assert resp.status == 200
            assert "/v1/apply" in (await resp.json())["paths"]
