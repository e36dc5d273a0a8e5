"""`cairn up` and `cairn status`: the whole system on one machine, and how healthy it is.

Everything lives in one data folder (``./.cairn``, ``--data-dir`` or ``CAIRN_DATA_DIR``): NATS's
JetStream store, PostgreSQL's cluster, the generated secrets, and while Cairn runs, ``state.json``
(where every part listens) and ``cli.json`` (where the control-plane commands find the admin API).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec

from cairn_cli.local import write_private
from cairn_common import nats_auth
from cairn_common.topology import Topology

SERVICES = nats_auth.SERVICES
STATE_FILE = "state.json"
CLI_FILE = "cli.json"


class ServiceEndpoint(msgspec.Struct, frozen=True):
    pid: int
    health_url: str


class LocalState(msgspec.Struct, frozen=True, kw_only=True):
    """Where a running ``cairn up`` listens; written once everything is ready."""

    pid: int
    nats_url: str
    nats_monitor_url: str
    database_url: str
    tracking_url: str
    admin_url: str
    services: dict[str, ServiceEndpoint]
    sink_smtp: str = ""
    sink_http: str = ""
    write_key: str | None = None
    nats_monitor_urls: list[str] = msgspec.field(default_factory=list)
    """Every NATS node's monitoring URL when ``--nats-nodes`` runs a cluster."""


def cairn_home(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get("CAIRN_DATA_DIR") or ".cairn").resolve()


def secret_in(home: Path, name: str) -> str:
    """A secret generated once and kept in the data folder (owner-only), so restarts agree."""
    path = home / name
    if not path.exists():
        write_private(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


def read_state(home: Path) -> LocalState | None:
    path = home / STATE_FILE
    if not path.exists():
        return None
    try:
        return msgspec.json.decode(path.read_bytes(), type=LocalState)
    except msgspec.DecodeError:
        return None


def write_state(home: Path, state: LocalState, admin_token: str) -> None:
    # Owner-only: it holds the database URL with its password.
    write_private(home / STATE_FILE, msgspec.json.format(msgspec.json.encode(state)).decode())
    cli = home / CLI_FILE
    write_private(cli, json.dumps({"api_url": state.admin_url, "token": admin_token}, indent=2))


def clear_state(home: Path) -> None:
    for name in (STATE_FILE, CLI_FILE):
        (home / name).unlink(missing_ok=True)


# ---- cairn status --------------------------------------------------------------------------------


class Check(msgspec.Struct, frozen=True):
    component: str
    url: str
    healthy: bool
    detail: str


async def check_all(state: LocalState) -> list[Check]:
    timeout = aiohttp.ClientTimeout(total=3)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        monitors = state.nats_monitor_urls or [state.nats_monitor_url]
        urls = state.nats_url.split(",")
        checks = [
            *(
                _http_check(
                    http,
                    "nats" if i == 0 else f"nats-{i + 1}",
                    urls[i] if len(urls) == len(monitors) else state.nats_url,
                    f"{monitor}/healthz",
                )
                for i, monitor in enumerate(monitors)
            ),
            _postgres_check(state.database_url),
            *(
                _http_check(http, name, ep.health_url, f"{ep.health_url}/readyz")
                for name, ep in state.services.items()
            ),
        ]
        return list(await asyncio.gather(*checks))


async def _http_check(http: aiohttp.ClientSession, name: str, shown: str, url: str) -> Check:
    try:
        async with http.get(url) as resp:
            body = await resp.text()
            if resp.status == 200:
                return Check(name, shown, True, "ready")
            try:
                problems = json.loads(body).get("problems") or [body.strip()]
            except (json.JSONDecodeError, AttributeError):
                problems = [body.strip()[:200]]
            return Check(name, shown, False, "; ".join(map(str, problems)) or str(resp.status))
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Check(name, shown, False, f"unreachable ({type(exc).__name__})")


async def _postgres_check(url: str) -> Check:
    shown = url.split("@")[-1]
    try:
        conn = await asyncpg.connect(url, timeout=3)
        try:
            version = await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()
        return Check("postgres", shown, True, f"PostgreSQL {version}")
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return Check("postgres", shown, False, f"unreachable ({exc or type(exc).__name__})")


class DeadLetterCount(msgspec.Struct, frozen=True):
    count: int
    newest_reason: str | None


async def count_dead_letters(admin_url: str, token: str | None) -> DeadLetterCount | None:
    """How many dead letters wait, from the admin API (None when it cannot say: the admin
    check above already reports why). Dead letters do not make the system unhealthy: it goes on
    around them; they wait for someone to read, fix and re-drive them."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http,
            http.get(f"{admin_url}/v1/dead-letters?limit=1", headers=headers) as resp,
        ):
            if resp.status != 200:
                return None
            body = await resp.json()
    except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError):
        return None
    newest = body["dead_letters"][0]["reason"] if body.get("dead_letters") else None
    return DeadLetterCount(int(body.get("total", 0)), newest)


def _admin_token(home: Path) -> str | None:
    try:
        saved = json.loads((home / CLI_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    token = saved.get("token") if isinstance(saved, dict) else None
    return token if isinstance(token, str) else None


async def _status_of(state: LocalState, home: Path) -> tuple[list[Check], DeadLetterCount | None]:
    checks, letters = await asyncio.gather(
        check_all(state), count_dead_letters(state.admin_url, _admin_token(home))
    )
    return checks, letters


def _dead_letter_line(letters: DeadLetterCount | None) -> str | None:
    if letters is None or letters.count == 0:
        return None
    reason = " ".join((letters.newest_reason or "").split())
    reason = reason if len(reason) <= 100 else reason[:97] + "..."
    return f"dead letters  {letters.count} (newest: {reason}); see `cairn dead-letters list`"


def status_command(args: argparse.Namespace) -> int:
    home = cairn_home(args.data_dir)
    state = read_state(home)
    if state is None:
        msg = f"Cairn is not running from {home} (no {STATE_FILE}); start it with `cairn up`"
        if args.output == "json":
            print(json.dumps({"running": False, "message": msg}))
        else:
            print(msg)
        return 1
    checks, letters = asyncio.run(_status_of(state, home))
    healthy = all(c.healthy for c in checks)
    if args.output == "json":
        report: dict[str, Any] = {
            "running": True,
            "healthy": healthy,
            "components": [msgspec.to_builtins(c) for c in checks],
            "dead_letters": None if letters is None else msgspec.to_builtins(letters),
        }
        print(json.dumps(report, indent=2))
    else:
        print(_table(["COMPONENT", "ADDRESS", "STATUS", "DETAIL"], [
            [c.component, c.url, "healthy" if c.healthy else "UNHEALTHY", c.detail]
            for c in checks
        ]))  # fmt: skip
        print(f"\ntracking API  {state.tracking_url}\nadmin API     {state.admin_url}")
        if (line := _dead_letter_line(letters)) is not None:
            print(line)
    return 0 if healthy else 1


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


# ---- wiring --------------------------------------------------------------------------------------


def jetstream_sync(value: str) -> str:
    """``--jetstream-sync``: ``always``, ``default`` or a NATS duration (``500ms``, ``10s``,
    ``2m``, ``1h``)."""
    if value in ("always", "default") or re.fullmatch(r"[1-9][0-9]*(ms|s|m|h)", value):
        return value
    raise argparse.ArgumentTypeError(
        f"{value!r}: expected always, default or a duration such as 10s or 2m"
    )


SCALABLE = ("matcher", "scheduler", "dispatcher")
"""Services ``--scale`` may run several of (ingest's one HTTP port is the public address)."""


def scale(value: str) -> dict[str, int]:
    """``--scale``: ``matcher=2,dispatcher=2``."""
    counts: dict[str, int] = {}
    for part in value.split(","):
        name, eq, count = part.strip().partition("=")
        if name not in SCALABLE or not eq or not count.isdigit() or not 1 <= int(count) <= 8:
            raise argparse.ArgumentTypeError(
                f"{part!r}: expected SERVICE=COUNT with SERVICE one of {', '.join(SCALABLE)} "
                "and COUNT from 1 to 8"
            )
        counts[name] = int(count)
    return counts


def up_command(args: argparse.Namespace) -> int:
    from cairn_cli.up import run_up

    return run_up(cairn_home(args.data_dir), args)


def nats_users_values(namespace: str) -> str:
    values = nats_auth.helm_values(Topology(namespace))
    header = (
        "# Generated by `uv run cairn nats-users` (cairn_common.nats_auth): one NATS user per\n"
        "# service with least-privilege permissions. JSON is YAML; do not edit, regenerate.\n"
    )
    return header + json.dumps(values, indent=2) + "\n"


def nats_users_command(args: argparse.Namespace) -> int:
    print(nats_users_values(args.namespace), end="")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser(
        "up",
        help="run NATS, PostgreSQL and the four services on this machine",
        description="Start NATS (JetStream) and PostgreSQL in the data folder, apply migrations, "
        "create the streams, start ingest, matcher, scheduler and dispatcher as separate "
        "processes and print where everything listens. Ctrl-C stops it all.",
    )
    up.add_argument("--data-dir", help="data folder (default ./.cairn, or $CAIRN_DATA_DIR)")
    up.add_argument("--http-port", type=int, default=8080, help="tracking API port (8080)")
    up.add_argument("--admin-port", type=int, default=8090, help="admin API port (8090)")
    up.add_argument(
        "--nats-port", type=int, help="NATS client port (default: last run's, else 4222 if free)"
    )
    up.add_argument(
        "--postgres-port", type=int, help="PostgreSQL port (default: last run's, else 5432 if free)"
    )
    up.add_argument(
        "--jetstream-sync",
        type=jetstream_sync,
        default="always",
        metavar="always|default|DURATION",
        help="when JetStream fsyncs what it stores: 'always' (default, as deploy/k8s: every "
        "write is on disk before it is acknowledged, so a 200 from ingest survives a power cut), "
        "'default' (the server's own, every 2 minutes) or an interval such as 10s "
        "(docs/decisions/0056-jetstream-sync-always.md)",
    )
    up.add_argument(
        "--nats-nodes",
        type=int,
        choices=(1, 3, 5),
        default=1,
        help="NATS servers: 3 or 5 form a JetStream cluster on loopback with every stream "
        "replicated on 3 of them, as deploy/k8s runs it (default 1)",
    )
    up.add_argument(
        "--scale",
        type=scale,
        default={},
        metavar="SERVICE=N,...",
        help="run N replicas of a service, e.g. matcher=2,dispatcher=2 (matcher, scheduler, "
        "dispatcher; default one of each)",
    )
    up.add_argument(
        "--otlp-endpoint",
        default=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        help="export traces to this OTLP/HTTP endpoint (e.g. Jaeger's http://127.0.0.1:4318)",
    )
    up.set_defaults(func=up_command)

    users = sub.add_parser(
        "nats-users",
        help="print the NATS Helm values that give each service its user and permissions",
        description="Print values for the NATS Helm chart (1.x) adding one user per service, "
        "with the permissions derived from the topology (cairn_common.nats_auth); passwords come "
        "from the Secret cairn-nats-users. deploy/k8s/nats-users-values.yaml is this output.",
    )
    users.add_argument("--namespace", default="cairn", help="CAIRN_NAMESPACE (default cairn)")
    users.set_defaults(func=nats_users_command)

    status = sub.add_parser("status", help="health of a running `cairn up`; exit 0 when healthy")
    status.add_argument("--data-dir", help="data folder (default ./.cairn, or $CAIRN_DATA_DIR)")
    status.add_argument("-o", "--output", choices=["table", "json"], default="table")
    status.set_defaults(func=status_command)
