"""The admin API's own listener, started by the ingest process next to the Tracking API.

Separate from the Tracking API's port on purpose: the tracking port faces the internet, the admin
port stays inside the cluster (decision 0004).
"""

from __future__ import annotations

import asyncpg
import structlog
from aiohttp import web
from nats.js.client import JetStreamContext

from cairn_common.topology import Topology
from cairn_control.api import admin_app

log = structlog.get_logger(__name__)


async def start_admin_listener(
    pool: asyncpg.Pool,
    js: JetStreamContext,
    topology: Topology,
    *,
    host: str,
    port: int,
    token: str,
    partitions: int,
    shutdown_timeout: float = 10.0,
) -> web.AppRunner | None:
    """Serve the admin API on ``host:port``; ``None`` (and a warning) when no token is set,
    because the admin API never runs without authentication. Stop it with ``cleanup()``."""
    if not token:
        log.warning("admin api disabled: set CAIRN_ADMIN_TOKEN to serve it", port=port)
        return None
    runner = web.AppRunner(
        admin_app(pool, js, topology, token, partitions=partitions),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    log.info("admin api listening", url=f"http://{host}:{runner.addresses[0][1]}")
    return runner
