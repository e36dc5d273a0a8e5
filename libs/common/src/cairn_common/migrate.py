"""`python -m cairn_common.migrate`: apply the bundled migrations to ``CAIRN_DATABASE_URL``, exit.

This is what the Kubernetes migrations Job runs, so the services can start with
``CAIRN_MIGRATE_ON_START=false`` and never race a schema change during a rolling deploy. It is
safe to run twice, or beside a service that migrates on start: the advisory lock in
``db.apply_migrations`` serialises them and the second finds nothing to do.

``python -m cairn_common.migrate --wait`` applies nothing: it waits until every migration bundled
in this image has been applied (by the Job) and exits. The services' pods run it as an init
container, so a pod of a new version never starts against the old schema while the old pods keep
serving.

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

from cairn_common.db import MigrationError, bundled_migrations, migrate
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


async def wait_until_migrated(url: str, timeout: float) -> None:
    """Return once every bundled migration is recorded as applied with the same checksum."""
    wanted = {m.version: m.checksum for m in bundled_migrations()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    missing: list[str] = []
    while True:
        try:
            missing = await _missing_migrations(url, wanted)
        except (OSError, asyncpg.CannotConnectNowError) as exc:
            missing = [f"database not reachable: {exc or type(exc).__name__}"]
        if not missing:
            return
        if loop.time() >= deadline:
            raise TimeoutError(f"schema not migrated after {timeout:g}s: {', '.join(missing)}")
        log.info("waiting for the migrations job", missing=missing)
        await asyncio.sleep(min(2.0, max(0.05, deadline - loop.time())))


async def _missing_migrations(url: str, wanted: dict[int, str]) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT version, checksum FROM cairn_schema_migrations")
    except asyncpg.UndefinedTableError:
        rows = []
    finally:
        await conn.close()
    have = {r["version"]: r["checksum"] for r in rows}
    problems = [f"{v:04d} not applied" for v in sorted(wanted) if v not in have]
    for version, checksum in sorted(wanted.items()):
        if version in have and have[version] != checksum:
            raise MigrationError(f"migration {version:04d} in the database differs from this image")
    return problems


def main() -> None:
    try:
        settings = load_settings(MigrateSettings)
    except SettingsError as exc:
        print(f"cairn-migrate: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging("migrate", fmt=settings.log_format, level=settings.log_level)
    url, timeout = settings.database_url, settings.migrate_timeout_seconds
    try:
        if "--wait" in sys.argv[1:]:
            asyncio.run(wait_until_migrated(url, timeout))
            log.info("schema is migrated")
            return
        applied = asyncio.run(migrate_when_reachable(url, timeout))
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
