"""How long ``GET /v1/journeys/{name}/stats`` takes for a big journey, and what recording
delivery analytics costs the matcher's commit.

Fills a throwaway PostgreSQL (loopback, temporary folder) with ``--instances`` instances of the
abandoned-cart journey spread over 30 days, each with a sent email, half of them opened and a
tenth clicked, recorded through the matcher's own ``add_delivery_events`` in batches of 1,000
(as a busy matcher commit would), then times the stats query (by day and by hour).

    uv run python bench/observe/stats_scale.py [--instances 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cairn_cli.local import LocalPostgres  # noqa: E402
from cairn_common.db import apply_migrations  # noqa: E402
from cairn_control.stats import journey_stats  # noqa: E402
from cairn_matcher.repo import DeliveryEventRow, add_delivery_events  # noqa: E402

DEFINITION = (ROOT / "examples/journeys/abandoned-cart.yaml").read_text()


async def fill(conn: asyncpg.Connection, n: int) -> None:
    import json

    import yaml

    doc = yaml.safe_load(DEFINITION)
    await conn.execute(
        "INSERT INTO journeys (name, state, live_version) VALUES ('abandoned-cart', 'live', 1)"
    )
    await conn.execute(
        "INSERT INTO journey_versions (journey, version, definition, checksum) "
        "VALUES ('abandoned-cart', 1, $1::jsonb, 'x')",
        json.dumps(doc),
    )
    start = datetime.now(UTC) - timedelta(days=30)
    await conn.execute(
        """INSERT INTO journey_instances (instance_id, journey, version, profile_id, status,
                                          started_at)
           SELECT 'i' || g, 'abandoned-cart', 1, 'p' || g,
                  CASE WHEN g % 10 = 0 THEN 'active' ELSE 'completed' END,
                  $2::timestamptz + (g * interval '30 days' / $1)
           FROM generate_series(1, $1) g""",
        n,
        start,
    )
    events: list[DeliveryEventRow] = []
    for g in range(1, n + 1):
        at = start + timedelta(days=30) * g / n
        for kind, every in (("sent", 1), ("opened", 2), ("clicked", 10)):
            if g % every == 0:
                events.append((f"d{g}", kind, f"i{g}", "initial-email", "email", None, at))
    began = time.perf_counter()
    for i in range(0, len(events), 1000):
        async with conn.transaction():
            await add_delivery_events(conn, events[i : i + 1000])
    took = time.perf_counter() - began
    print(f"recorded {len(events):,} delivery events: {took / len(events) * 1e6:.0f} µs each")
    await conn.execute(
        """INSERT INTO journey_stats (journey, version, step_id, counter, hour, n)
           SELECT 'abandoned-cart', 1, s, c, date_trunc('hour', $1::timestamptz) + h * interval
                  '1 hour', 10
           FROM unnest(ARRAY['', 'initial-email', 'opened']) s,
                unnest(ARRAY['entered', 'reached', 'send_requested']) c,
                generate_series(0, 719) h""",
        start,
    )
    await conn.execute("ANALYZE")


async def run(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="cairn-bench-") as tmp:
        pg = LocalPostgres(Path(tmp) / "pg", fsync=False)
        pg.start(log_file=Path(tmp) / "pg.log")
        try:
            conn = await asyncpg.connect(pg.url())
            await apply_migrations(conn)
            began = time.perf_counter()
            await fill(conn, n)
            print(f"filled {n:,} instances in {time.perf_counter() - began:.1f} s")
            await conn.close()
            pool = await asyncpg.create_pool(pg.url(), min_size=1, max_size=2)
            for by in ("day", "hour"):
                times = []
                for _ in range(3):
                    began = time.perf_counter()
                    stats = await journey_stats(pool, "abandoned-cart", by=by)  # type: ignore[arg-type]
                    times.append(time.perf_counter() - began)
                sends = stats.steps[0].sends
                assert sends is not None
                assert sends.sent == n
                print(
                    f"stats by {by:<4}: best {min(times) * 1000:7.1f} ms of 3 "
                    f"({len(stats.series)} periods, sent {sends.sent:,}, opened {sends.opened:,})"
                )
            await pool.close()
        finally:
            pg.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=200_000)
    asyncio.run(run(parser.parse_args().instances))


if __name__ == "__main__":
    main()
