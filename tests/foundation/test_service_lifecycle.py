"""Each service is a real process: it starts, connects, provisions, reports ready, stops cleanly."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import pytest
from nats.js.client import JetStreamContext

from cairn_common.topology import Topology
from tests.support.processes import ServiceProcess

SERVICES = ["cairn_ingest", "cairn_matcher", "cairn_scheduler", "cairn_dispatcher"]


@pytest.mark.parametrize("module", SERVICES)
async def test_service_becomes_ready_and_exits_cleanly_on_sigterm(
    module: str, spawn: Callable[..., ServiceProcess], js: JetStreamContext, topology: Topology
) -> None:
    service = spawn(module)
    await service.wait_ready()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{service.health_url}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{service.health_url}/metrics") as resp:
            assert resp.status == 200
            assert "cairn_messages_handled_total" in await resp.text()
    # provisioning happened: every stream of the topology exists
    for spec in topology.streams():
        info = await js.stream_info(spec.name)
        assert list(info.config.subjects or []) == list(spec.subjects)
    service.terminate()
    assert await service.wait_exit(timeout=20) == 0
    assert '"stopped"' in service.output()


async def test_missing_setting_stops_startup_naming_the_variable(
    spawn: Callable[..., ServiceProcess],
) -> None:
    service = spawn("cairn_matcher", CAIRN_NATS_URL="")
    del service.env["CAIRN_NATS_URL"]
    service.stop()
    service = ServiceProcess("cairn_matcher", {}, service.log_path.parent)
    for key in [k for k in service.env if k.startswith("CAIRN_")]:
        if key not in {"CAIRN_HEALTH_PORT", "CAIRN_LOG_FORMAT"}:
            del service.env[key]
    service.start()
    assert await service.wait_exit(timeout=20) == 2
    out = service.output()
    assert "CAIRN_NATS_URL is required but not set" in out
    assert "CAIRN_DATABASE_URL is required but not set" in out
