"""A throwaway Cairn for benchmarks: real NATS and PostgreSQL in a temporary folder on loopback,
services run as real processes, everything stopped on exit."""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cairn_cli.local import LocalNats, LocalPostgres  # noqa: E402
from tests.support.processes import ServiceProcess  # noqa: E402


class Rig:
    def __init__(self, root: Path, nats: LocalNats, pg: LocalPostgres) -> None:
        self.root = root
        self.nats = nats
        self.pg = pg
        self.database_url = pg.url("bench")
        self.namespace = "bench"
        self.procs: list[ServiceProcess] = []

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "CAIRN_NATS_URL": self.nats.url,
            "CAIRN_DATABASE_URL": self.database_url,
            "CAIRN_NAMESPACE": self.namespace,
            "CAIRN_LOG_LEVEL": "warning",
            **extra,
        }

    def spawn(self, module: str, **extra: str) -> ServiceProcess:
        proc = ServiceProcess(module, self.env(**extra), self.root).start()
        self.procs.append(proc)
        return proc


@contextlib.contextmanager
def rig(*, fsync: bool = True) -> Iterator[Rig]:
    with tempfile.TemporaryDirectory(prefix="cairn-bench-") as tmp:
        root = Path(tmp)
        nats = LocalNats(root / "nats")
        pg = LocalPostgres(root / "pg", fsync=fsync)
        nats.start(log_file=root / "nats.log")
        try:
            pg.start(log_file=root / "pg.log")
            pg.create_database("bench")
            r = Rig(root, nats, pg)
            try:
                yield r
            finally:
                for p in r.procs:
                    p.stop()
        finally:
            pg.stop()
            nats.stop()


async def deadlocks(database_url: str) -> int:
    """``pg_stat_database.deadlocks`` of the bench database. Backends report their counters
    when idle or at exit, so read it after stopping the services for an exact delta."""
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        )
        return count
    finally:
        await conn.close()


def rss_mb(proc: ServiceProcess) -> float:
    assert proc.proc is not None
    return psutil.Process(proc.proc.pid).memory_info().rss / 1e6


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]
