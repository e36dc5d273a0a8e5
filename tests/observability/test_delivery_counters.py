"""The matcher's delivery analytics as the stats read them: each delivery counts once per
outcome, open and click, whatever is delivered again, with the reasons of skips and drops."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from cairn_common.db import apply_migrations
from cairn_control.stats import journey_stats
from cairn_matcher.housekeeping import prune_delivery_events
from cairn_matcher.repo import DeliveryEventRow, add_delivery_events

AT = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
JOURNEY = '{"name": "cart", "steps": [{"id": "mail", "send": {"channel": "email"}}]}'


async def test_outcomes_opens_and_clicks_count_once_per_delivery_with_reasons(
    database_url: str,
) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    async with pool.acquire() as conn:
        await apply_migrations(conn)
        await conn.execute(
            "INSERT INTO journeys (name, state, live_version) VALUES ('cart', 'live', 1)"
        )
        await conn.execute(
            "INSERT INTO journey_versions (journey, version, definition, checksum) "
            "VALUES ('cart', 1, $1::jsonb, 'x')",
            JOURNEY,
        )
        await conn.executemany(
            "INSERT INTO journey_instances (instance_id, journey, version, profile_id, status, "
            "started_at) VALUES ($1, 'cart', 1, $1, 'completed', $2)",
            [(f"i{n}", AT) for n in range(1, 6)],
        )

        def ev(n: int, kind: str, reason: str | None = None) -> DeliveryEventRow:
            return (f"d{n}", kind, f"i{n}", "mail", "email", reason, AT, None)

        batches = [
            [ev(1, "sent"), ev(2, "sent"), ev(3, "skipped", "frequency cap: 1 per 1 day on email")],
            [ev(4, "dropped", "instance exited"), ev(5, "suppressed", "unsubscribed")],
            [ev(1, "opened"), ev(1, "clicked"), ev(2, "deferred", "quiet hours until 08:00")],
            # delivered again: a result re-published, a second open, a second click
            [ev(1, "sent"), ev(1, "opened"), ev(1, "clicked"), ev(4, "dropped", "instance exited")],
        ]
        for batch in batches:
            async with conn.transaction():
                await add_delivery_events(conn, batch)

    stats = await journey_stats(pool, "cart", by="hour")
    (mail,) = stats.steps
    sends = mail.sends
    assert sends is not None
    assert (sends.sent, sends.opened, sends.clicked) == (2, 1, 1)
    assert (sends.skipped, sends.dropped, sends.suppressed, sends.deferred) == (1, 1, 1, 1)
    assert (sends.open_rate, sends.click_rate) == (50.0, 50.0)
    assert sends.reasons == {
        "skipped": {"frequency cap: 1 per 1 day on email": 1},
        "dropped": {"instance exited": 1},
        "suppressed": {"unsubscribed": 1},
    }
    assert mail.counters == {}  # outcome counters are shown under `sends` only
    (hour,) = stats.series
    assert hour.period == AT.replace(minute=0)
    assert hour.counters == {"sent": 2, "opened": 1, "clicked": 1}
    await pool.close()


async def test_retention_deletes_old_delivery_events_and_keeps_the_counters(
    database_url: str,
) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    async with pool.acquire() as conn:
        await apply_migrations(conn)
        await conn.execute(
            "INSERT INTO journey_instances (instance_id, journey, version, profile_id, status, "
            "started_at) VALUES ('i1', 'cart', 1, 'p1', 'completed', $1)",
            AT,
        )
        old, recent = AT - timedelta(days=500), datetime.now(UTC)
        rows = [(f"d{n}", "sent", "i1", "mail", "email", None, old) for n in range(25)]
        rows.append(("d-new", "sent", "i1", "mail", "email", None, recent))
        await add_delivery_events(conn, rows)

    assert await prune_delivery_events(pool, days=400, chunk=10) == 25
    assert await pool.fetchval("SELECT array_agg(delivery_id) FROM delivery_events") == ["d-new"]
    assert (
        await pool.fetchval("SELECT sum(n) FROM journey_stats WHERE counter = 'delivery:sent'")
        == 26
    )
    await pool.close()
