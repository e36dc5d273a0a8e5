"""`cairn stats`: the funnel from the matcher's exact counters, in the journey's step order."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.control.conftest import EXAMPLES, Admin, run_cli

DAY1 = datetime(2026, 11, 20, 9, tzinfo=UTC)
DAY2 = datetime(2026, 11, 21, 15, tzinfo=UTC)


async def _abandoned_cart_with_counters(admin: Admin) -> None:
    await admin.apply_files(EXAMPLES)
    await admin.ready_all_templates()
    status, body = await admin.call("POST", "/v1/journeys/abandoned-cart/publish")
    assert status == 200, body
    # What the matcher commits into journey_stats as instances run (counter, hour, n).
    rows = [
        ("", "entered", DAY1, 6), ("", "entered", DAY2, 4),
        ("", "converted", DAY1, 3), ("", "converted", DAY2, 1),
        ("", "completed", DAY2, 2), ("", "exited:Order Completed", DAY2, 4),
        ("", "skipped:already_active", DAY1, 2),
        ("initial-email", "reached", DAY1, 10), ("initial-email", "send_requested", DAY1, 9),
        ("initial-email", "skipped:no_address", DAY1, 1),
        ("opened", "reached", DAY1, 10), ("opened", "matched", DAY2, 3),
        ("opened", "timed_out", DAY2, 5),
        ("text-reminder", "reached", DAY2, 5), ("text-reminder", "send_requested", DAY2, 5),
    ]  # fmt: skip
    # Split over two committers' shards, as concurrent commits write them: the stats sum them.
    shards = [(*r[:3], 0, r[3] // 2) for r in rows] + [(*r[:3], 7, r[3] - r[3] // 2) for r in rows]
    await admin.pool.executemany(
        "INSERT INTO journey_stats (journey, version, step_id, counter, hour, shard, n) "
        "VALUES ('abandoned-cart', 1, $1, $2, $3, $4, $5)",
        shards,
    )


async def test_stats_show_totals_conversion_against_target_and_the_funnel(admin: Admin) -> None:
    await _abandoned_cart_with_counters(admin)
    status, body = await admin.call("GET", "/v1/journeys/abandoned-cart/stats")
    assert status == 200, body
    assert (body["entered"], body["completed"], body["converted"]) == (10, 2, 4)
    assert body["exited"] == {"Order Completed": 4}
    assert (body["conversion_rate"], body["goal_target"]) == (40.0, 50.0)
    assert body["journey_counters"]["skipped:already_active"] == 2
    steps = [(s["step_id"], s["kind"]) for s in body["steps"]]
    assert steps == [
        ("initial-email", "send"),
        ("opened", "wait_for"),
        ("text-reminder", "send"),
        ("pause", "wait"),
        ("final-push", "send"),
    ]
    assert body["steps"][0]["counters"] == {
        "reached": 10, "send_requested": 9, "skipped:no_address": 1,
    }  # fmt: skip
    sends = body["steps"][0]["sends"]
    assert (sends["requested"], sends["sent"], sends["skipped"]) == (9, 0, 1)
    assert sends["reasons"] == {"skipped": {"no address": 1}}
    assert body["steps"][1]["sends"] is None  # a wait_for step sends nothing
    assert [(p["period"][:10], p["counters"]) for p in body["series"]] == [
        ("2026-11-20", {"entered": 6, "converted": 3}),
        ("2026-11-21", {"entered": 4, "converted": 1, "completed": 2}),
    ]


async def test_cli_stats_prints_a_readable_funnel(admin: Admin) -> None:
    await _abandoned_cart_with_counters(admin)
    result = await run_cli("stats", "abandoned-cart", api=admin.url)
    assert result.code == 0, result
    assert "entered 10" in result.out
    assert "converted 4 (40% vs target 50%: below)" in result.out
    assert "exited:  Order Completed 4" in result.out
    lines = result.out.splitlines()
    email = next(line for line in lines if line.startswith("initial-email"))
    # step, kind, reached, requested, sent, opened, clicked, skipped (no address)
    assert email.split()[:8] == ["initial-email", "send", "10", "9", "0", "0", "0", "1"]
    assert "initial-email skipped: no address 1" in lines
    assert any(line.startswith("2026-11-21") for line in lines)
