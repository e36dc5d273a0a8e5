"""A million customers parked on a long wait, with the whole system running (``cairn up``).

    uv run python bench/e2e/parked.py                  # 1,000,000 waiting, 100,000 due in 10 s
    uv run python bench/e2e/parked.py --total 100000 --due 20000

The journey is ``trigger Parked -> wait 1d (step nap) -> end``. One instance is started the way
a user starts it, through the Tracking API, and the matcher writes its state, instance and timer.
The bench then writes ``--total`` more exactly like it (the same structs, encoded by
``cairn_journey.state``, in their profiles' partitions), straight into PostgreSQL: making a
million through ingest would take most of an hour on this machine and measure ingest, which the
end-to-end runs already do. Then it reports:

- PostgreSQL's size (each table, and per 1,000 waiting instances) and every process's memory;
- each service SIGKILLed in turn, and NATS and PostgreSQL: the time until it answers again, for
  the matcher until its partitions are owned again, and the inputs the restarted matcher applied
  (nothing may be replayed: none arrived);
- ``--due`` more instances whose waits end within the same 10 s: how fast the scheduler fires
  them (timers gone per second) and each instance's lateness, from its due time until the
  matcher committed its end (``ended_at``): what a customer waiting on a timer gets.

Targets (bench/engine): matcher RSS under 500 MB, fire p99 under 100 ms, 20,000 fires/s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import Fault, Faults, System, percentiles, say, tree_memory_mb  # noqa: E402

from cairn_common.partitioning import partition_for  # noqa: E402
from cairn_journey.state import ProfileState, decode_state, encode_state  # noqa: E402
from cairn_journey.stepping import make_id  # noqa: E402

JOURNEY = "parked"
DOCUMENT = f"""kind: Journey
name: {JOURNEY}
trigger: {{event: Parked}}
entry: {{repeat: always}}
steps:
  - id: nap
    wait: 1d
"""
PARTITIONS = 64
CHUNK = 50_000


async def template(system: System, http: aiohttp.ClientSession, url: str) -> ProfileState:
    """The state the matcher wrote for one real entry."""
    state = system.state
    assert state is not None
    event = {"userId": "pk-template", "event": "Parked", "messageId": "m-template"}
    async with http.post(
        f"{state.tracking_url}/v1/track",
        json=event,
        headers={
            "Authorization": "Basic " + base64.b64encode(f"{state.write_key}:".encode()).decode()
        },
    ) as resp:
        assert resp.status == 200, await resp.text()
    conn = await asyncpg.connect(url)
    try:
        for _ in range(200):
            row = await conn.fetchrow(
                "SELECT s.state FROM profile_states s JOIN timers t USING (profile_id)"
                " WHERE s.profile_id = 'pk-template'"
            )
            if row is not None:
                return decode_state(row["state"])
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    raise SystemExit("the template instance never appeared")


async def park(
    url: str, model: ProfileState, prefix: str, count: int, due: Any, version: int
) -> None:
    """``count`` profiles like ``model``, each with one instance waiting at ``nap`` until
    ``due(i)``."""
    (instance,) = model.instances
    assert instance.pending is not None
    visit = instance.visits.get("nap", 1)
    now = datetime.now(UTC)
    conn = await asyncpg.connect(url)
    try:
        for start in range(0, count, CHUNK):
            states, instances, timers = [], [], []
            for i in range(start, min(start + CHUNK, count)):
                pid = f"{prefix}{i}"
                part = partition_for(pid, PARTITIONS)
                iid = make_id("in_", pid, JOURNEY, i)
                tid = make_id("tm_", iid, "nap", visit)
                at = due(i)
                one = msgspec.structs.replace(
                    instance, id=iid, started_at=now,
                    pending=msgspec.structs.replace(instance.pending, timer_id=tid, due_at=at),
                )  # fmt: skip
                states.append((pid, part, encode_state(msgspec.structs.replace(
                    model, profile_id=pid, instances=(one,), seen=()))))  # fmt: skip
                instances.append((iid, JOURNEY, version, pid, None, "active", now))
                timers.append((tid, pid, part, iid, "nap", "wait", at))
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "profile_states", records=states, columns=["profile_id", "partition", "state"]
                )
                await conn.copy_records_to_table(
                    "journey_instances", records=instances,
                    columns=["instance_id", "journey", "version", "profile_id", "unique_value",
                             "status", "started_at"],
                )  # fmt: skip
                await conn.copy_records_to_table(
                    "timers", records=timers,
                    columns=["timer_id", "profile_id", "partition", "instance_id", "step_id",
                             "kind", "due_at"],
                )  # fmt: skip
    finally:
        await conn.close()


async def sizes(url: str) -> dict[str, float]:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("ANALYZE profile_states; ANALYZE journey_instances; ANALYZE timers")
        out = {
            "database": float(await conn.fetchval("SELECT pg_database_size(current_database())"))
        }
        for table in ("profile_states", "journey_instances", "timers"):
            out[table] = float(await conn.fetchval("SELECT pg_total_relation_size($1)", table))
        return out
    finally:
        await conn.close()


async def inputs_applied(http: aiohttp.ClientSession, health_url: str) -> float:
    """``cairn_matcher_inputs_total`` of one matcher process, all kinds and outcomes."""
    async with http.get(f"{health_url}/metrics") as resp:
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("cairn_matcher_inputs_total{"))  # fmt: skip


async def restarts(system: System, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
    """Each part SIGKILLed in turn; when it answers again."""
    state = system.state
    assert state is not None
    out = []
    for target in ("ingest", "matcher", "scheduler", "dispatcher", "nats", "postgres"):
        fault = Fault(target, 0.0)
        await Faults(system, http, [fault]).run(time.time())
        row: dict[str, Any] = {"target": target, "back_after_s": fault.back_after,
                               "partitions_owned_after_s": fault.owned_after}  # fmt: skip
        if target == "matcher":
            await asyncio.sleep(5.0)
            row["inputs_applied_after_restart"] = await inputs_applied(
                http, state.services["matcher"].health_url
            )
        out.append(row)
        await asyncio.sleep(2.0)
    return out


async def come_due(
    system: System, model: ProfileState, count: int, version: int, lead: float
) -> dict[str, Any]:
    """``count`` instances due within 10 s, ``lead`` seconds from now; how late each ended."""
    state = system.state
    assert state is not None
    base = datetime.now(UTC) + timedelta(seconds=lead)

    def due(i: int) -> datetime:
        return base + timedelta(seconds=10.0 * i / count)

    t = time.monotonic()
    await park(state.database_url, model, "pd-", count, due, version)
    say(f"{count:,} instances due from {base:%H:%M:%S} written in {time.monotonic() - t:.1f} s")
    if datetime.now(UTC) > base:
        say("warning: they were written after the first came due; raise --lead")
    conn = await asyncpg.connect(state.database_url)
    gone: list[tuple[float, int]] = []
    peak_matcher = 0.0
    try:
        deadline = time.time() + lead + 300
        while time.time() < deadline:
            left = await conn.fetchval("SELECT count(*) FROM timers WHERE profile_id LIKE 'pd-%'")
            ended = await conn.fetchval(
                "SELECT count(*) FROM journey_instances WHERE profile_id LIKE 'pd-%'"
                " AND status <> 'active'"
            )
            gone.append((time.time(), count - left))
            pids = system.processes()
            peak_matcher = max(peak_matcher, tree_memory_mb(pids["matcher"]))
            if ended == count:
                break
            await asyncio.sleep(0.2)
        rows = await conn.fetch(
            "SELECT profile_id, ended_at FROM journey_instances"
            " WHERE profile_id LIKE 'pd-%' AND ended_at IS NOT NULL"
        )
    finally:
        await conn.close()
    late = [(r["ended_at"] - due(int(r["profile_id"][3:]))).total_seconds() for r in rows]
    fired = [(t, n) for t, n in gone if 0 < n < count] or gone
    first = next((t for t, n in gone if n > 0), gone[0][0])
    last = next((t for t, n in gone if n == count), gone[-1][0])
    return {
        "due": count,
        "ended": len(rows),
        "timers_fired_per_s": count / max(last - first, 1e-9) if fired else 0.0,
        "end_lateness_s": percentiles(late),
        "matcher_peak_mb": peak_matcher,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with contextlib.ExitStack() as cleanup:
        tmp = tempfile.mkdtemp(prefix="cairn-parked-")
        cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
        home = Path(tmp) / "cairn"
        system = System(home, "always")
        cleanup.callback(system.stop)
        say(f"starting the system (cairn up) in {home}")
        state = system.start()
        (home / "parked.yaml").write_text(DOCUMENT)
        system.cli("apply", "-f", str(home / "parked.yaml"))
        system.cli("publish", JOURNEY)
        await asyncio.sleep(2.0)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            model = await template(system, http, state.database_url)
            version = model.instances[0].version
            far = datetime.now(UTC) + timedelta(days=1)
            t = time.monotonic()
            await park(state.database_url, model, "pk-", args.total,
                       lambda i: far + timedelta(milliseconds=i), version)  # fmt: skip
            written = time.monotonic() - t
            say(f"{args.total:,} waiting instances written in {written:.1f} s")
            size = await sizes(state.database_url)
            await asyncio.sleep(10.0)
            memory = {n: tree_memory_mb(p) for n, p in system.processes().items()}
            say(
                "PostgreSQL "
                + ", ".join(f"{k} {v / 1e6:,.0f} MB" for k, v in size.items())
                + f"; {size['database'] / args.total * 1000 / 1e6:.2f} MB per 1,000 instances"
            )
            say("memory MB " + "  ".join(f"{k} {v:.0f}" for k, v in memory.items()))
            back = await restarts(system, http)
            replayed = next(
                r["inputs_applied_after_restart"] for r in back if r["target"] == "matcher"
            )
            say(
                f"the restarted matcher applied {replayed:.0f} inputs (none arrived: none replayed)"
            )
            due = await come_due(system, model, args.due, version, args.lead)
            say(f"{due['ended']:,}/{due['due']:,} ended; timers fired at "
                f"{due['timers_fired_per_s']:,.0f}/s; lateness (due -> ended) " + "  ".join(
                    f"{k} {v * 1000:,.0f} ms" for k, v in (due["end_lateness_s"] or {}).items()
                    if k != "n") + f"; matcher peak {due['matcher_peak_mb']:.0f} MB")  # fmt: skip
            return {"waiting": args.total, "written_s": written, "postgres_bytes": size,
                    "memory_mb": memory, "restarts": back, "come_due": due}  # fmt: skip
    raise AssertionError("unreachable")


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--total", type=int, default=1_000_000, help="instances parked on a 1-day wait")
    p.add_argument("--due", type=int, default=100_000, help="instances due within the same 10 s")
    p.add_argument("--lead", type=float, default=45.0, help="seconds until the first is due")
    p.add_argument("--out", default="parked-report.json")
    args = p.parse_args()
    result = asyncio.run(main(args))
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    say(f"report written to {args.out}")


if __name__ == "__main__":
    cli()
