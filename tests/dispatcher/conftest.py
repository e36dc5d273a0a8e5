"""Fixtures of the dispatcher tests: a migrated database, local provider servers, the service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import asyncpg
import pytest

from tests.dispatcher.support import HttpSink, SmtpSink, prepare_database
from tests.support.processes import ServiceProcess

TRACKING_SECRET = "test-tracking-secret"
WEBHOOK_SECRET = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHM="  # base64("secret-key-for-tests")

DISPATCHER_ENV = {
    "CAIRN_RETRY_BASE_SECONDS": "0.05",
    "CAIRN_DOCUMENTS_TTL_SECONDS": "0",
    "CAIRN_FETCH_TIMEOUT_SECONDS": "0.2",
    "CAIRN_TRACKING_SECRET": TRACKING_SECRET,
    "CAIRN_TRACKING_BASE_URL": "http://track.test",
    "CAIRN_PROVIDER_TIMEOUT_SECONDS": "5",
    "CAIRN_FUNCTION_TIMEOUT_SECONDS": "1",
    "CAIRN_FUNCTION_MEMORY_MB": "32",
    "CAIRN_MAX_ATTEMPTS": "3",
    "CAIRN_SMTP_POOL_SIZE": "2",
    "TEST_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "TEST_API_KEY": "key-123",
    "CAIRN_FUNCTION_SECRET_API_KEY": "key-123",
}


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await prepare_database(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def sink() -> AsyncIterator[HttpSink]:
    server = await HttpSink().start()
    yield server
    await server.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    server = SmtpSink().start()
    yield server
    server.stop()


@pytest.fixture
def start_dispatcher(
    spawn: Callable[..., ServiceProcess],
) -> Callable[..., ServiceProcess]:
    def start(**env: str) -> ServiceProcess:
        return spawn("cairn_dispatcher", **{**DISPATCHER_ENV, **env})

    return start
