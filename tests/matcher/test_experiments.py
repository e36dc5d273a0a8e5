"""Experiments and holdouts through the real matcher and scheduler: a split's figures per path
match the events sent, its winner is recorded from them and takes later entries; a holdout
receives nothing and its conversion is measured against the journey's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from nats.js.client import JetStreamContext

from cairn_cli.control_stats import print_stats
from cairn_common.topology import Topology
from cairn_control.stats import journey_stats
from cairn_journey.stepping import holdout_point
from tests.matcher.test_journeys import Engine, running_engine
from tests.support.engine import metric, wait_for_rows
from tests.support.processes import ServiceProcess


@pytest.fixture
async def engine(
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> AsyncIterator[Engine]:
    env = {"CAIRN_WINNERS_SECONDS": "0.3"}  # a due winner is recorded within 0.3 s
    async with running_engine(spawn, js, topology, database_url, **env) as engine:
        yield engine


def _email(step_id: str, template: str) -> dict[str, Any]:
    return {
        "id": step_id,
        "send": {"channel": "email", "template": template, "to": "profile.email"},
    }


SUBJECTS: dict[str, Any] = {
    "kind": "Journey",
    "name": "subject-test",
    "trigger": "Cart Abandoned",
    "entry": {"repeat": "always", "unique_by": "cart_id"},
    "goal": {"event": "Order Completed", "match": "cart_id"},
    "steps": [
        {
            "id": "subject",
            "split": [
                {"name": "plain", "percent": 50, "steps": [_email("plain-email", "a")]},
                {"name": "urgent", "percent": 50, "steps": [_email("urgent-email", "b")]},
            ],
            "winner": {"sample": 20},
        },
        {"id": "pause", "wait": "1s"},
    ],
}


async def _split_counters(engine: Engine) -> dict[str, int]:
    rows = await engine.pool.fetch(
        "SELECT counter, sum(n)::int AS n FROM journey_stats"
        " WHERE journey = 'subject-test' AND step_id = 'subject' GROUP BY counter"
    )
    return {r["counter"]: r["n"] for r in rows}


async def test_a_split_reports_each_paths_conversions_and_its_winner_takes_later_entries(
    engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    await engine.publish(SUBJECTS)
    customers = [f"c{n:02d}" for n in range(19)]
    for pid in customers:
        await engine.customer(pid)
        await engine.inputs.send(pid, "Cart Abandoned", properties={"cart_id": f"k-{pid}"})
    emails = {d.profile_id: d.step_id for d in await engine.deliveries.until(19)}
    path = {pid: emails[pid].removesuffix("-email") for pid in customers}
    plain = [pid for pid in customers if path[pid] == "plain"]
    urgent = [pid for pid in customers if path[pid] == "urgent"]
    assert plain, "19 customers, two even paths: both are taken"
    assert urgent
    # Every urgent customer orders, every other plain one.
    buyers = urgent + plain[::2]
    for pid in buyers:
        await engine.inputs.send(pid, "Order Completed", properties={"cart_id": f"k-{pid}"})
    async with asyncio.timeout(30):
        while sum(v for k, v in (await _split_counters(engine)).items()
                  if k.startswith("converted:")) < len(buyers):  # fmt: skip
            await asyncio.sleep(0.1)
    assert await engine.pool.fetchval("SELECT count(*) FROM split_decisions") == 0  # 19 < 20

    await engine.customer("c19")  # the 20th entry completes the sample
    await engine.inputs.send("c19", "Cart Abandoned", properties={"cart_id": "k-c19"})
    await wait_for_rows(engine.pool, "SELECT count(*) FROM split_decisions", expect=1)
    decision = await engine.pool.fetchrow("SELECT * FROM split_decisions")
    assert (decision["step_id"], decision["path_name"], decision["path"]) == (
        "subject",
        "urgent",
        1,
    )
    async with asyncio.timeout(15):
        while await metric(engine.matcher.health_url, "cairn_matcher_decided_splits") < 1:
            await asyncio.sleep(0.05)

    later = [f"d{n}" for n in range(6)]
    for pid in later:
        await engine.customer(pid)
        await engine.inputs.send(pid, "Cart Abandoned", properties={"cart_id": f"k-{pid}"})
    await engine.deliveries.until(26)
    assert {engine.deliveries.steps(pid)[0] for pid in later} == {"urgent-email"}

    counters = await _split_counters(engine)
    assert counters["winner:urgent"] == 6
    stats = await journey_stats(engine.pool, "subject-test")
    (split,) = [s for s in stats.steps if s.step_id == "subject"]
    assert split.paths is not None
    c19_urgent = engine.deliveries.steps("c19") == ["urgent-email"]
    figures = {p.name: (p.entered, p.sends, p.converted) for p in split.paths}
    assert figures == {
        "plain": (len(plain) + (not c19_urgent), len(plain) + (not c19_urgent), len(plain[::2])),
        "urgent": (len(urgent) + c19_urgent + 6, len(urgent) + c19_urgent + 6, len(urgent)),
    }
    rates = {p.name: p.conversion_rate for p in split.paths}
    assert rates["plain"] == round(100 * len(plain[::2]) / figures["plain"][0], 2)
    assert [p.name for p in split.paths if p.winner] == ["urgent"]
    assert split.winner is not None
    assert split.winner.path == "urgent"
    assert split.winner.reason is not None
    assert split.winner.reason.startswith("best goal conversion")
    assert stats.converted == len(buyers)

    print_stats(msgspec.to_builtins(stats), lambda rows, headers: print(headers, *rows))
    shown = capsys.readouterr().out
    assert "experiment subject:" in shown
    assert "winner: urgent" in shown


HELD: dict[str, Any] = {
    "kind": "Journey",
    "name": "held",
    "trigger": "Cart Abandoned",
    "entry": {"repeat": "always", "unique_by": "cart_id"},
    "holdout": "25%",
    "goal": {"event": "Order Completed", "match": "cart_id"},
    "steps": [_email("email", "t"), {"id": "pause", "wait": "1s"}],
}


async def test_a_holdout_receives_nothing_and_its_conversion_is_measured_apart(
    engine: Engine,
) -> None:
    await engine.publish(HELD)
    customers = [f"h{n:02d}" for n in range(32)]
    held = [pid for pid in customers if holdout_point(pid, "held") < 25]
    treated = [pid for pid in customers if pid not in held]
    assert len(held) >= 3
    assert len(treated) >= 3
    for pid in customers:
        await engine.customer(pid)
        await engine.inputs.send(pid, "Cart Abandoned", properties={"cart_id": f"k-{pid}"})
    await engine.deliveries.until(len(treated))
    buyers = customers[::3]
    for pid in buyers:
        await engine.inputs.send(pid, "Order Completed", properties={"cart_id": f"k-{pid}"})
    await wait_for_rows(
        engine.pool,
        "SELECT count(*) FROM journey_instances WHERE journey = 'held' AND status = 'completed'",
        expect=len(customers),
    )
    await engine.deliveries.settle()
    assert {pid for pid in customers if engine.deliveries.steps(pid)} == set(treated)
    assert all(engine.deliveries.steps(pid) == ["email"] for pid in treated)

    stats = await journey_stats(engine.pool, "held")
    h = stats.holdout
    assert h is not None
    held_buyers = len([pid for pid in buyers if pid in held])
    treated_buyers = len(buyers) - held_buyers
    assert (h.percent, h.entered, h.converted) == (25.0, len(held), held_buyers)
    assert (h.treated_entered, h.treated_converted) == (len(treated), treated_buyers)
    assert (stats.entered, stats.converted) == (len(treated), treated_buyers)
    assert h.treated_rate is not None
    assert h.conversion_rate is not None
    assert h.lift == round(h.treated_rate - h.conversion_rate, 2)
    (email,) = [s for s in stats.steps if s.step_id == "email"]
    assert email.counters["holdout:withheld"] == len(held)
    assert email.counters["reached"] == len(treated)
