"""Control-plane figures: apply+publish latency, and how fast `stop --exit-all` reaches profiles.

Starts its own NATS and PostgreSQL on free loopback ports in a temporary folder, runs, prints,
stops them. `uv run python bench/control/lifecycle.py [--profiles N] [--publishes K]`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import nats

from cairn_cli.local import LocalNats, LocalPostgres
from cairn_common.bus import provision_topology
from cairn_common.db import create_pool, migrate
from cairn_common.topology import Topology
from cairn_control.stop import stop_journey
from cairn_control.store import apply_documents, publish
from cairn_control.templates import set_template_status
from cairn_control.validation import parse_texts

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PARTITIONS = 64


def example_texts() -> list[tuple[str, str]]:
    return [(p.read_text(), str(p.relative_to(ROOT))) for p in sorted(EXAMPLES.rglob("*.yaml"))]


async def bench(database_url: str, nats_url: str, profiles: int, publishes: int) -> None:
    await migrate(database_url)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    topology = Topology("bench")
    await provision_topology(js, topology)
    pool = await create_pool(database_url, min_size=1, max_size=4)
    try:
        documents, problems = parse_texts(example_texts())
        assert not problems, problems
        await apply_documents(pool, documents)
        for doc in documents:
            if doc.kind == "Template":
                await set_template_status(pool, doc.name, "ready")

        cart = next(d for d in documents if d.name == "abandoned-cart")
        latencies = []
        for i in range(publishes):
            changed = cart.source_text.replace("within: 1d", f"within: {i + 1}h")
            [draft], _ = parse_texts([(changed, cart.source)])
            started = time.perf_counter()
            await apply_documents(pool, [draft])
            result = await publish(pool, "abandoned-cart")
            latencies.append(time.perf_counter() - started)
            assert result.outcome == "published", result
        latencies.sort()
        print(f"apply + publish (abandoned-cart, {publishes} versions): "
              f"p50 {statistics.median(latencies) * 1000:.1f} ms, "
              f"p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:.1f} ms")  # fmt: skip

        await pool.executemany(
            "INSERT INTO journey_instances (instance_id, journey, version, profile_id, status, "
            "started_at) VALUES ($1, 'abandoned-cart', 1, $2, 'active', now())",
            [(f"i{n}", f"profile-{n}") for n in range(profiles)],
        )
        started = time.perf_counter()
        stopped = await stop_journey(
            pool, js, topology, "abandoned-cart", "exit_all", partitions=PARTITIONS
        )
        elapsed = time.perf_counter() - started
        info = await js.stream_info(topology.inputs_stream)
        assert info.state.messages == profiles == stopped.profiles_exited
        rate = profiles / elapsed
        print(f"stop --exit-all: {profiles} profiles sent ExitInstances in {elapsed:.2f} s "
              f"({rate:,.0f} profiles/s, every publish acknowledged by JetStream)")  # fmt: skip
    finally:
        await pool.close()
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--publishes", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cairn-bench-control-") as tmp:
        nats_server = LocalNats(Path(tmp) / "nats")
        pg = LocalPostgres(Path(tmp) / "pg", fsync=False)
        nats_server.start()
        try:
            pg.start()
            try:
                pg.create_database("bench")
                asyncio.run(bench(pg.url("bench"), nats_server.url, args.profiles, args.publishes))
            finally:
                pg.stop()
        finally:
            nats_server.stop()


if __name__ == "__main__":
    main()
