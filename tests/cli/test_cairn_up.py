"""`cairn up` and `cairn status` as a newcomer runs them: real processes, real servers."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from cairn_cli.local import LocalPostgres, free_port

pytestmark = pytest.mark.e2e

CAIRN = [sys.executable, "-m", "cairn_cli"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is not running.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1][0] != "Z"


def _start_up(
    home: Path, *extra: str, ports: dict[str, Any] | None = None
) -> subprocess.Popen[str]:
    # Pre-seed the port choices so the test never takes the well-known ports of a real Cairn.
    home.mkdir(parents=True, exist_ok=True)
    (home / "ports.json").write_text(json.dumps({"nats_monitor": free_port(), **(ports or {})}))
    return subprocess.Popen(
        [*CAIRN, "up", "--data-dir", str(home), "--http-port", str(free_port()),
         "--admin-port", str(free_port()), "--nats-port", str(free_port()),
         "--postgres-port", str(free_port()), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _kill_all(proc: subprocess.Popen[str], home: Path) -> None:
    """A test that failed half-way: `cairn up` killed, and the servers and services it started
    (each in a session of its own, so they outlive it) with it, so they do not load the machine
    for every later test."""
    if proc.poll() is not None:
        return  # it stopped by itself, and stopped what it started
    proc.kill()
    proc.wait(10)
    pids = [int(f.stem.rsplit("_", 1)[1]) for f in home.glob("nats*/ports/nats-server_*.ports")]
    with contextlib.suppress(OSError, ValueError, IndexError):
        pids.append(int((home / "postgres" / "postmaster.pid").read_text().split()[0]))
    with contextlib.suppress(OSError, ValueError, KeyError):
        services = json.loads((home / "state.json").read_text())["services"]
        pids += [s["pid"] for s in services.values()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _read_until_up(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    seen: list[str] = []
    for line in proc.stdout:
        seen.append(line)
        if "Cairn is up" in line:
            # Keep reading what the services print, so a full pipe never blocks `cairn up`.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return "".join(seen)
    raise AssertionError("cairn up ended before it was up:\n" + "".join(seen[-60:]))


def _status(home: Path) -> tuple[int, dict[str, Any]]:
    result = subprocess.run(
        [*CAIRN, "status", "--data-dir", str(home), "-o", "json"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return result.returncode, json.loads(result.stdout)


ANONYMOUS_NATS = """
import asyncio, sys
import nats

async def main() -> int:
    try:
        nc = await nats.connect(sys.argv[1], allow_reconnect=False, max_reconnect_attempts=0,
                                connect_timeout=3)
    except Exception as exc:
        print(type(exc).__name__, exc)
        return 3 if "authorization" in str(exc).lower() else 4
    await nc.close()
    return 0

sys.exit(asyncio.run(main()))
"""


def test_up_reports_every_part_healthy_and_ctrl_c_leaves_nothing_behind(tmp_path: Path) -> None:
    home = tmp_path / "cairn"
    proc = _start_up(home)
    try:
        _read_until_up(proc)
        code, report = _status(home)
        assert code == 0, report
        components = {c["component"]: c["healthy"] for c in report["components"]}
        assert components == {
            "nats": True, "postgres": True,
            "ingest": True, "matcher": True, "scheduler": True, "dispatcher": True,
        }  # fmt: skip
        state = json.loads((home / "state.json").read_text())
        pids = [s["pid"] for s in state["services"].values()]
        pids += [int((home / "postgres" / "postmaster.pid").read_text().split()[0])]
        (nats_ports,) = (home / "nats" / "ports").glob("nats-server_*.ports")
        pids += [int(nats_ports.stem.rsplit("_", 1)[1])]
        assert all(_alive(pid) for pid in pids)
        assert json.loads((home / "cli.json").read_text())["api_url"] == state["admin_url"]
        # JetStream syncs every write by default, as deploy/k8s does (decision 0056).
        assert 'sync_interval: "always"' in (home / "nats" / "nats.conf").read_text()

        # A killed service comes back, and state.json names its new process.
        killed = state["services"]["ingest"]["pid"]
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = json.loads((home / "state.json").read_text())["services"]["ingest"]["pid"]
            if now != killed and _alive(now) and _status(home)[0] == 0:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"ingest was not restarted, or state.json still names {killed}")
        pids.append(now)
        for secret in (
            "admin-token",
            "tracking-secret",
            "write-key",
            "cli.json",
            "nats-credentials.json",
            "nats/nats.conf",
            "postgres-password",
            "state.json",
        ):
            assert (home / secret).stat().st_mode & 0o077 == 0, secret  # owner-only
        # PostgreSQL takes SCRAM passwords only: a login without one is refused.
        anonymous = state["database_url"].split("@", 1)[1]
        denied = subprocess.run(
            [str(LocalPostgres.bin_dir() / "psql"), "-w", f"postgresql://postgres@{anonymous}",
             "-tAc", "SELECT 1"],
            capture_output=True, text=True, timeout=30, check=False,
            env={**os.environ, "PGPASSWORD": ""},
        )  # fmt: skip
        assert denied.returncode != 0
        assert "password" in denied.stderr, denied.stderr
        # NATS refuses a client without credentials (services and tools have their users).
        refused = subprocess.run(
            [sys.executable, "-c", ANONYMOUS_NATS, state["nats_url"]],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert refused.returncode == 3, refused.stdout + refused.stderr

        # What Ctrl-C does, pressed again and again by an impatient user until Cairn is gone.
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.3)
        assert proc.wait(timeout=5) == 0
    finally:
        _kill_all(proc, home)
    assert not [pid for pid in pids if _alive(pid)]
    assert not (home / "state.json").exists()
    code, report = _status(home)
    assert code == 1
    assert report["running"] is False


def test_second_run_resumes_with_the_data_it_left(tmp_path: Path) -> None:
    home = tmp_path / "cairn"
    for extra in ([], ["--jetstream-sync", "default"]):
        proc = _start_up(home, *extra)
        try:
            output = _read_until_up(proc)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 0
        finally:
            _kill_all(proc, home)
    # The second start found its database and migrations in place.
    assert "migrations: up to date" in output
    # ... and JetStream at the server's own sync interval, as asked.
    assert "sync_interval" not in (home / "nats" / "nats.conf").read_text()


@pytest.mark.parametrize("value", ["never", "0s", "10", "1d", ""])
def test_jetstream_sync_takes_always_default_or_a_duration(value: str) -> None:
    result = subprocess.run(
        [*CAIRN, "up", "--jetstream-sync", value, "--data-dir", "/nonexistent"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "expected always, default or a duration" in result.stderr


def test_up_restarts_nats_and_postgres_and_the_services_carry_on(tmp_path: Path) -> None:
    home = tmp_path / "cairn"
    proc = _start_up(home)
    try:
        _read_until_up(proc)
        state = json.loads((home / "state.json").read_text())
        (nats_ports,) = (home / "nats" / "ports").glob("nats-server_*.ports")
        nats_pid = int(nats_ports.stem.rsplit("_", 1)[1])
        postgres_pid = int((home / "postgres" / "postmaster.pid").read_text().split()[0])
        os.kill(nats_pid, signal.SIGKILL)
        os.kill(postgres_pid, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            code, report = _status(home)
            if code == 0:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"not healthy again after NATS and PostgreSQL died: {report}")
        (now_ports,) = (home / "nats" / "ports").glob("nats-server_*.ports")
        assert now_ports != nats_ports  # a new server, not the old one still dying
        now_postgres = int((home / "postgres" / "postmaster.pid").read_text().split()[0])
        assert now_postgres != postgres_pid
        # Events are accepted again: ingest reached the new NATS server (and its JetStream store).
        request = urllib.request.Request(
            f"{state['tracking_url']}/v1/track",
            data=json.dumps({"userId": "u1", "event": "Back", "messageId": "m-back"}).encode(),
            headers={
                "Content-Type": "application/json",
                "Authorization": "Basic "
                + base64.b64encode(f"{state['write_key']}:".encode()).decode(),
            },
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        _kill_all(proc, home)


def _monitor(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as answer:
        result: dict[str, Any] = json.loads(answer.read())
        return result


def _inputs_stream(monitor_url: str) -> dict[str, Any]:
    body = _monitor(f"{monitor_url}/jsz?streams=true&config=true")
    streams = [s for a in body["account_details"] for s in a.get("stream_detail", [])]
    return next(s for s in streams if s["name"] == "CAIRN_INPUTS")


def _query(url: str, sql: str) -> list[Any]:
    import asyncio

    import asyncpg

    async def run() -> list[Any]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(run())


def test_up_scaled_out_runs_a_nats_cluster_and_replicas_and_loses_a_node(tmp_path: Path) -> None:
    """`--nats-nodes 3 --scale matcher=2,dispatcher=2` runs what deploy/k8s runs: a JetStream
    cluster with every stream on three nodes, two matchers sharing the partitions, two
    dispatchers. The node leading the inputs stream dies; events are still accepted and
    applied."""
    home = tmp_path / "cairn"
    more_nodes = {
        "nats_more": [[free_port(), free_port()], [free_port(), free_port()]],
        "nats_cluster": [free_port(), free_port(), free_port()],
    }
    proc = _start_up(home, "--nats-nodes", "3", "--scale", "matcher=2,dispatcher=2",
                     ports=more_nodes)  # fmt: skip
    try:
        printed = _read_until_up(proc)
        assert "a cluster of 3" in printed
        state = json.loads((home / "state.json").read_text())
        assert set(state["services"]) == {
            "ingest", "matcher", "matcher-2", "scheduler", "dispatcher", "dispatcher-2",
        }  # fmt: skip
        assert len(state["nats_url"].split(",")) == 3
        deadline = time.monotonic() + 30  # the nodes' JetStream catches up with its peers
        while (answer := _status(home))[0] != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        code, report = answer
        unhealthy = [c for c in report["components"] if not c["healthy"]]
        assert code == 0, unhealthy
        assert {"nats", "nats-2", "nats-3"} <= {c["component"] for c in report["components"]}
        inputs = _inputs_stream(state["nats_monitor_url"])
        assert inputs["config"]["num_replicas"] == 3
        assert len(inputs["cluster"]["replicas"]) == 2  # and the leader
        # Both matchers take their share of the partitions.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            owners = _query(
                state["database_url"],
                "SELECT owner, count(*) AS n FROM partition_leases"
                " WHERE expires_at > now() GROUP BY owner",
            )
            if sorted(r["n"] for r in owners) == [32, 32]:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"the partitions were not shared: {owners}")
        leader = inputs["cluster"]["leader"]  # cairn-local-N
        node = int(leader.rsplit("-", 1)[1])
        folders = [home / "nats", home / "nats-2", home / "nats-3"]
        (ports,) = (folders[node - 1] / "ports").glob("nats-server_*.ports")
        os.kill(int(ports.stem.rsplit("_", 1)[1]), signal.SIGKILL)
        request = urllib.request.Request(
            f"{state['tracking_url']}/v1/identify",
            data=json.dumps({"userId": "u-after", "traits": {"plan": "pro"}}).encode(),
            headers={
                "Content-Type": "application/json",
                "Authorization": "Basic "
                + base64.b64encode(f"{state['write_key']}:".encode()).decode(),
            },
        )
        # While the survivors elect a new leader ingest answers 503, and a client retries, as
        # Segment's libraries do.
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    assert answer.status == 200
                    break
            except urllib.error.HTTPError as refused:
                if refused.code != 503 or time.monotonic() > deadline:
                    raise
                time.sleep(0.25)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            (applied,) = _query(
                state["database_url"],
                "SELECT coalesce(sum(last_applied_seq), 0) AS n FROM partition_leases",
            )
            if applied["n"] > 0:  # the only input so far
                break
            time.sleep(0.25)
        else:
            raise AssertionError("the event was accepted but never applied by a matcher")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
    finally:
        _kill_all(proc, home)


@pytest.mark.parametrize("value", ["ingest=2", "matcher=0", "matcher", "dispatcher=x"])
def test_scale_names_what_is_wrong(value: str) -> None:
    result = subprocess.run(
        [*CAIRN, "up", "--scale", value, "--data-dir", "/nonexistent"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "expected SERVICE=COUNT with SERVICE one of matcher, scheduler, dispatcher" in (
        result.stderr
    )
