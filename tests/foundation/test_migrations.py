"""Migrations against a real PostgreSQL: ordered, idempotent, safe under concurrent starts."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from cairn_common.db import Migration, MigrationError, apply_migrations, bundled_migrations


async def test_bundled_migrations_apply_once_and_then_are_a_no_op(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        first = await apply_migrations(conn)
        assert first == [f"{m.version:04d}_{m.name}" for m in bundled_migrations()]
        assert await apply_migrations(conn) == []
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables")}
        assert {"journeys", "journey_versions", "resources", "profiles"} <= tables
    finally:
        await conn.close()


async def test_replicas_starting_at_once_apply_each_migration_exactly_once(
    database_url: str,
) -> None:
    conns = [await asyncpg.connect(database_url) for _ in range(5)]
    try:
        results = await asyncio.gather(*(apply_migrations(c) for c in conns))
        applied = [name for result in results for name in result]
        assert sorted(applied) == sorted(f"{m.version:04d}_{m.name}" for m in bundled_migrations())
        count = await conns[0].fetchval("SELECT count(*) FROM cairn_schema_migrations")
        assert count == len(bundled_migrations())
    finally:
        for c in conns:
            await c.close()


async def test_a_failing_migration_rolls_back_and_later_ones_do_not_run(database_url: str) -> None:
    good = Migration(1, "good", "CREATE TABLE a (x int);")
    bad = Migration(2, "bad", "CREATE TABLE b (x int); SELECT no_such_function();")
    later = Migration(3, "later", "CREATE TABLE c (x int);")
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.UndefinedFunctionError):
            await apply_migrations(conn, [good, bad, later])
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables")}
        assert "a" in tables
        assert "b" not in tables
        assert "c" not in tables
        # the lock was released: a fixed migration set goes through
        fixed = Migration(2, "bad", "CREATE TABLE b (x int);")
        assert await apply_migrations(conn, [good, fixed, later]) == ["0002_bad", "0003_later"]
    finally:
        await conn.close()


async def test_editing_an_applied_migration_is_reported_not_rerun(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await apply_migrations(conn, [Migration(1, "one", "CREATE TABLE a (x int);")])
        with pytest.raises(MigrationError, match="0001_one changed after it was applied"):
            await apply_migrations(conn, [Migration(1, "one", "CREATE TABLE a (y int);")])
    finally:
        await conn.close()


async def test_published_journey_versions_cannot_be_updated(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await apply_migrations(conn)
        await conn.execute("INSERT INTO journeys (name) VALUES ('cart')")
        await conn.execute(
            "INSERT INTO journey_versions (journey, version, definition, checksum) "
            "VALUES ('cart', 1, '{}', 'x')"
        )
        with pytest.raises(asyncpg.RaiseError, match="immutable"):
            await conn.execute("UPDATE journey_versions SET definition = '{\"a\": 1}'")
    finally:
        await conn.close()
