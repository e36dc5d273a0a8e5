"""`python -m cairn_common.migrate`: apply the bundled migrations to ``CAIRN_DATABASE_URL``, exit.

This is what the Kubernetes migrations Job runs, so the services can start with
``CAIRN_MIGRATE_ON_START=false`` and never race a schema change during a rolling deploy. It is
safe to run twice, or beside a service that migrates on start: the advisory lock in
``db.apply_migrations`` serialises them and the second finds nothing to do.

Exit codes: 0 when the schema is up to date, 2 for a configuration problem (the variable is named),
1 when the database refused or could not be reached within ``CAIRN_MIGRATE_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Literal

import asyncpg
import msgspec
import structlog

from cairn_common.db import MigrationError, migrate
from cairn_common.observability import configure_logging
from cairn_common.settings import SettingsError, load_settings

log = structlog.get_logger(__name__)


class MigrateSettings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str
    migrate_timeout_seconds: float = 120.0
    """How long to keep retrying an unreachable database (a fresh cluster may still be starting)."""
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"


async def migrate_when_reachable(url: str, timeout: float) -> list[str]:
    """Apply migrations, retrying connection failures until ``timeout`` seconds have passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.2
    while True:
        try:
            return await migrate(url)
        except (OSError, asyncpg.CannotConnectNowError) as exc:
            if loop.time() + delay > deadline:
                raise TimeoutError(f"database not reachable after {timeout:g}s: {exc}") from exc
            log.warning("database not reachable yet", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def main() -> None:
    try:
        settings = load_settings(MigrateSettings)
    except SettingsError as exc:
        print(f"cairn-migrate: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging("migrate", fmt=settings.log_format, level=settings.log_level)
    try:
        applied = asyncio.run(
            migrate_when_reachable(settings.database_url, settings.migrate_timeout_seconds)
        )
    except (
        TimeoutError,
        ValueError,
        MigrationError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
    ) as exc:
        print(f"cairn-migrate: failed: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    log.info("schema up to date", applied=applied or "nothing to apply")


if __name__ == "__main__":
    main()
