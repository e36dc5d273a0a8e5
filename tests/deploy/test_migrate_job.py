"""`python -m cairn_common.migrate`, the command of the Kubernetes migrations Job."""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg

from cairn_common.db import bundled_migrations


async def run_migrate(**env: str) -> tuple[int, str]:
    return await run_migrate_args([], **env)


async def run_migrate_args(args: list[str], **env: str) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cairn_common.migrate",
        *args,
        env={**clean, "CAIRN_LOG_FORMAT": "json", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def applied_versions(url: str) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT version FROM cairn_schema_migrations ORDER BY version")
    finally:
        await conn.close()
    return [r["version"] for r in rows]


async def test_migrate_job_applies_every_bundled_migration_and_exits_zero(
    database_url: str,
) -> None:
    code, out = await run_migrate(CAIRN_DATABASE_URL=database_url)

    assert code == 0, out
    assert await applied_versions(database_url) == [m.version for m in bundled_migrations()]


async def test_migrate_job_run_twice_finds_nothing_to_do(database_url: str) -> None:
    first, _ = await run_migrate(CAIRN_DATABASE_URL=database_url)
    second, out = await run_migrate(CAIRN_DATABASE_URL=database_url)

    assert (first, second) == (0, 0), out
    assert "nothing to apply" in out
    assert await applied_versions(database_url) == [m.version for m in bundled_migrations()]


async def test_migrate_job_without_database_url_names_the_variable() -> None:
    code, out = await run_migrate()

    assert code == 2
    assert "CAIRN_DATABASE_URL is required but not set" in out


async def test_migrate_job_gives_up_on_an_unreachable_database_with_a_clear_error() -> None:
    code, out = await run_migrate(
        CAIRN_DATABASE_URL="postgresql://cairn@127.0.0.1:9/cairn",
        CAIRN_MIGRATE_TIMEOUT_SECONDS="0.5",
    )

    assert code == 1
    assert "database not reachable after 0.5s" in out


async def test_wait_mode_returns_once_the_job_has_migrated(database_url: str) -> None:
    env = {"CAIRN_DATABASE_URL": database_url, "CAIRN_MIGRATE_TIMEOUT_SECONDS": "60"}
    waiter = asyncio.create_task(run_migrate_args(["--wait"], **env))
    # The init container is still waiting while the schema is empty.
    done, _ = await asyncio.wait({waiter}, timeout=0.5)
    assert not done

    job_code, _ = await run_migrate(**env)
    wait_code, out = await waiter

    assert (job_code, wait_code) == (0, 0), out
    assert "schema is migrated" in out


async def test_wait_mode_on_an_unmigrated_database_times_out_naming_what_is_missing(
    database_url: str,
) -> None:
    code, out = await run_migrate_args(
        ["--wait"], CAIRN_DATABASE_URL=database_url, CAIRN_MIGRATE_TIMEOUT_SECONDS="0.3"
    )

    assert code == 1
    assert "schema not migrated after 0.3s: 0001 not applied" in out
