"""`cairn up`: supervise NATS, PostgreSQL and the four services until Ctrl-C.

Start-up order: NATS and PostgreSQL (in the data folder, on their stored ports when free), the
``cairn`` database, migrations, streams; then the services as separate processes, their output
prefixed by name. Once every ``/readyz`` answers 200 the summary is printed. A service that dies is
restarted (at once if it had run a while, else with a growing pause), and so are NATS and
PostgreSQL, so one crash does not end a newcomer's session; ``state.json`` names the current PIDs.
Ctrl-C or SIGTERM stops the services first (they drain), then PostgreSQL and NATS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import msgspec
from nats.errors import Error as NatsError

from cairn_cli.local import (
    LocalNats,
    LocalPostgres,
    LocalServerError,
    free_port,
    port_is_free,
    write_private,
)
from cairn_cli.local_system import (
    SERVICES,
    LocalState,
    ServiceEndpoint,
    clear_state,
    secret_in,
    write_state,
)
from cairn_cli.sinks import Sinks
from cairn_common import nats_auth
from cairn_common.bus import connect, provision_topology
from cairn_common.db import migrate
from cairn_common.observability import configure_logging
from cairn_common.topology import Topology

DATABASE = "cairn"
NATS_CREDENTIALS = "nats-credentials.json"
"""Each NATS user's password, owner-only (see nats_passwords)."""
READY_TIMEOUT = 90.0
SERVICE_STOP_TIMEOUT = 20.0
RESTART_RESET = 10.0
"""A service that ran this long before it died is restarted without a pause."""


class Ports(msgspec.Struct, kw_only=True):
    """Ports chosen on the first run and reused while free, so URLs stay the same across runs."""

    nats: int = 4222
    nats_monitor: int = 8222
    postgres: int = 5432
    http: int = 8080
    admin: int = 8090
    sink_smtp: int = 2525
    sink_http: int = 8025
    health: dict[str, int] = msgspec.field(default_factory=dict)
    nats_more: list[tuple[int, int]] = msgspec.field(default_factory=list)
    """Client and monitoring ports of the second and later NATS nodes (``--nats-nodes``)."""
    nats_cluster: list[int] = msgspec.field(default_factory=list)
    """Every NATS node's cluster (route) port, when there is more than one."""


def _choose_ports(home: Path, args: argparse.Namespace) -> Ports:
    path = home / "ports.json"
    ports = msgspec.json.decode(path.read_bytes(), type=Ports) if path.exists() else Ports()
    ports.http, ports.admin = args.http_port, args.admin_port
    taken: set[int] = set()
    for name, given in (("nats", args.nats_port), ("postgres", args.postgres_port)):
        if given is not None:
            if not port_is_free(given):
                raise LocalServerError(f"port {given} for {name} is in use")
            setattr(ports, name, given)

    def pick(preferred: int) -> int:
        port = preferred if preferred not in taken and port_is_free(preferred) else free_port()
        while port in taken:
            port = free_port()
        taken.add(port)
        return port

    ports.nats = pick(ports.nats)
    ports.nats_monitor = pick(ports.nats_monitor)
    nodes = args.nats_nodes
    more = [*ports.nats_more, *[(0, 0)] * nodes][: nodes - 1]
    ports.nats_more = [(pick(c or 4223 + i), pick(m or 8223 + i)) for i, (c, m) in enumerate(more)]
    routes = [*ports.nats_cluster, *[0] * nodes][:nodes] if nodes > 1 else []
    ports.nats_cluster = [pick(c or 6222 + i) for i, c in enumerate(routes)]
    ports.postgres = pick(ports.postgres)
    for name, preferred in (("http", ports.http), ("admin", ports.admin)):
        if not port_is_free(preferred):
            raise LocalServerError(
                f"port {preferred} for the {name} API is in use; pass --{name}-port"
            )
        taken.add(preferred)
    ports.sink_smtp = pick(ports.sink_smtp)
    ports.sink_http = pick(ports.sink_http)
    ports.health = {
        name: pick(ports.health.get(name, 9101 + i)) for i, name in enumerate(replicas(args))
    }
    path.write_bytes(msgspec.json.encode(ports))
    return ports


def replicas(args: argparse.Namespace) -> dict[str, str]:
    """Every service process to run, by name (``matcher``, ``matcher-2``, ...), with its
    service."""
    names: dict[str, str] = {}
    for service in SERVICES:
        for i in range(args.scale.get(service, 1)):
            names[service if i == 0 else f"{service}-{i + 1}"] = service
    return names


def nats_servers(home: Path, ports: Ports, args: argparse.Namespace) -> list[LocalNats]:
    """One NATS server, or ``--nats-nodes`` of them routed to each other as one cluster."""
    passwords = nats_passwords(home)
    nodes = [(ports.nats, ports.nats_monitor), *ports.nats_more]
    return [
        LocalNats(
            home / ("nats" if i == 0 else f"nats-{i + 1}"),
            port=client,
            monitor_port=monitor,
            users=nats_auth.users(Topology(), passwords),
            sync_interval=None if args.jetstream_sync == "default" else args.jetstream_sync,
            server_name="cairn-local" if len(nodes) == 1 else f"cairn-local-{i + 1}",
            cluster_port=ports.nats_cluster[i] if ports.nats_cluster else 0,
            routes=[p for j, p in enumerate(ports.nats_cluster) if j != i],
        )
        for i, (client, monitor) in enumerate(nodes)
    ]


def run_up(home: Path, args: argparse.Namespace) -> int:
    home.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        ports = _choose_ports(home, args)
    except LocalServerError as exc:
        print(f"cairn up: {exc}", file=sys.stderr)
        return 1
    passwords = nats_passwords(home)
    nats = nats_servers(home, ports, args)
    pg = LocalPostgres(
        home / "postgres", port=ports.postgres, password=secret_in(home, "postgres-password")
    )
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    try:
        where = ", ".join(str(n.port) for n in nats)
        cluster = f"a cluster of {len(nats)}, " if len(nats) > 1 else ""
        _say(
            f"starting NATS ({cluster}JetStream, sync {args.jetstream_sync}) on {where} "
            f"and PostgreSQL on {ports.postgres}"
        )
        for i, server in enumerate(nats):
            server.start(log_file=logs / ("nats.log" if i == 0 else f"nats-{i + 1}.log"))
        pg.start(log_file=logs / "postgres.log")
        pg.create_database(DATABASE)
        return asyncio.run(_supervise(home, args, ports, nats, pg, passwords, started))
    except LocalServerError as exc:
        print(f"cairn up: {exc} (logs in {logs})", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C while we stop must not abandon the servers half-way.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: _say("still stopping, one moment"))
        clear_state(home)
        pg.stop()
        for server in nats:
            server.stop()
        _say("stopped")
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # nothing left to stop; exit with our own code


def nats_passwords(home: Path) -> dict[str, str]:
    """Each NATS user's password (``cairn_common.nats_auth``): made once, kept owner-only in the
    data folder, so a restart, and any tool run beside it, agree with the server."""
    path = home / NATS_CREDENTIALS
    if path.exists():
        try:
            kept = msgspec.json.decode(path.read_bytes(), type=dict[str, str])
        except msgspec.DecodeError:
            kept = {}
        if set(kept) == set(nats_auth.ROLES):
            return kept
    passwords = nats_auth.new_passwords()
    write_private(path, msgspec.json.format(msgspec.json.encode(passwords)).decode())
    return passwords


async def _prepare(
    nats_url: str, database_url: str, setup_password: str, replicas: int = 1
) -> None:
    configure_logging("cairn-up", fmt="console", level="error")  # we narrate ourselves
    applied = await migrate(database_url)
    _say(f"migrations: {', '.join(applied) if applied else 'up to date'}")
    topology = Topology()
    nc = await connect(
        nats_url,
        name="cairn-up",
        user=nats_auth.user_name(topology.namespace, "setup"),
        password=setup_password,
        inbox_prefix=nats_auth.inbox_prefix(topology.namespace, "setup"),
    )
    try:
        # A new cluster elects its JetStream meta leader a moment after its servers answer.
        deadline = time.monotonic() + 60
        while True:
            try:
                await provision_topology(nc.jetstream(), topology, replicas=replicas)
                break
            except (NatsError, TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise LocalServerError(f"JetStream did not become ready: {exc}") from exc
                await asyncio.sleep(0.5)
    finally:
        await nc.close()


async def _supervise(
    home: Path,
    args: argparse.Namespace,
    ports: Ports,
    nats: list[LocalNats],
    pg: LocalPostgres,
    passwords: dict[str, str],
    started: float,
) -> int:
    database_url = pg.url(DATABASE)
    nats_url = ",".join(n.url for n in nats)
    stream_replicas = min(len(nats), 3)
    await _prepare(nats_url, database_url, passwords["setup"], stream_replicas)
    admin_token = secret_in(home, "admin-token")
    env = {
        **os.environ,
        "CAIRN_NATS_URL": nats_url,
        "CAIRN_STREAM_REPLICAS": str(stream_replicas),
        "CAIRN_DATABASE_URL": database_url,
        "CAIRN_LOG_FORMAT": "console",
        "CAIRN_MIGRATE_ON_START": "false",
        "CAIRN_HTTP_PORT": str(ports.http),
        "CAIRN_ADMIN_PORT": str(ports.admin),
        "CAIRN_ADMIN_TOKEN": admin_token,
        "CAIRN_TRACKING_SECRET": secret_in(home, "tracking-secret"),
        "CAIRN_TRACKING_BASE_URL": f"http://127.0.0.1:{ports.http}",
        "PYTHONUNBUFFERED": "1",
    }
    if args.otlp_endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = args.otlp_endpoint
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    sinks = Sinks(
        lambda text: _say(text, who="sink"), smtp_port=ports.sink_smtp, http_port=ports.sink_http
    )
    await sinks.start()
    services = {
        name: SupervisedService(
            name,
            {
                **env,
                "CAIRN_HEALTH_PORT": str(ports.health[name]),
                "CAIRN_NATS_USER": nats_auth.user_name(Topology().namespace, service),
                "CAIRN_NATS_PASSWORD": passwords[service],
                # Each replica keeps its name across restarts: a restarted matcher, scheduler or
                # dispatcher takes its previous process's partitions, timer claims and delivery
                # claims back at once (leases.py, lookahead.py, decision 0064).
                "CAIRN_REPLICA_ID": f"{socket.gethostname()}-{name}",
            },
            service=service,
        )
        for name, service in replicas(args).items()
    }
    async with asyncio.TaskGroup() as tg:
        for svc in services.values():
            tg.create_task(svc.run(stopping), name=svc.name)
        tg.create_task(_keep_servers_up(nats, pg, logs=home / "logs", stopping=stopping))
        ready = await _wait_ready(services, stopping)
        admin_url = f"http://127.0.0.1:{ports.admin}"
        write_key = await _default_write_key(home, admin_url, admin_token) if ready else None
        if ready:
            state = LocalState(
                pid=os.getpid(),
                nats_url=nats_url,
                nats_monitor_url=nats[0].monitor_url,
                nats_monitor_urls=[n.monitor_url for n in nats] if len(nats) > 1 else [],
                database_url=database_url,
                tracking_url=f"http://127.0.0.1:{ports.http}",
                admin_url=f"http://127.0.0.1:{ports.admin}",
                sink_smtp=f"smtp://127.0.0.1:{ports.sink_smtp}",
                sink_http=f"http://127.0.0.1:{ports.sink_http}",
                services={},
                write_key=write_key,
            )

            def record_state() -> LocalState:
                """state.json names every service's current process: rewritten on restarts."""
                current = {
                    name: ServiceEndpoint(svc.pid or 0, svc.health_url)
                    for name, svc in services.items()
                }
                now = msgspec.structs.replace(state, services=current)
                write_state(home, now, admin_token)
                return now

            for svc in services.values():
                svc.on_start = record_state
            _print_summary(home, record_state(), time.monotonic() - started)
        else:
            stopping.set()
        await stopping.wait()
        _say("stopping services (they finish in-flight work first)")
    await sinks.stop()
    return 0 if ready else 1


async def _keep_servers_up(
    nats: list[LocalNats], pg: LocalPostgres, *, logs: Path, stopping: asyncio.Event
) -> None:
    """NATS or PostgreSQL dying (a crash, an OOM kill, a test killing it on purpose) is restarted
    on its folder and port, as the services are; they reconnect by themselves."""
    servers: list[tuple[str, LocalNats | LocalPostgres, Path]] = [
        *(
            (n.server_name if len(nats) > 1 else "nats-server", n,
             logs / ("nats.log" if i == 0 else f"nats-{i + 1}.log"))
            for i, n in enumerate(nats)
        ),
        ("postgres", pg, logs / "postgres.log"),
    ]  # fmt: skip
    while not stopping.is_set():
        for name, server, log in servers:
            proc = server.proc
            if proc is None or proc.poll() is None:
                continue
            _say(f"{name} exited with code {proc.returncode}; restarting it")
            for attempt in range(20):
                try:
                    await asyncio.to_thread(server.start, log)
                    _say(f"{name} is back")
                    break
                except LocalServerError as exc:
                    # A killed postmaster's backends hold its shared memory for a moment.
                    if attempt == 19 or stopping.is_set():
                        _say(f"{name} could not be restarted: {exc}")
                        stopping.set()
                        return
                    await asyncio.sleep(0.5)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=0.25)


async def _wait_ready(services: dict[str, SupervisedService], stopping: asyncio.Event) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        pending = set(services)
        while pending and not stopping.is_set():
            if time.monotonic() > deadline:
                _say(f"not ready after {READY_TIMEOUT:.0f}s: {', '.join(sorted(pending))}")
                return False
            for name in list(pending):
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{services[name].health_url}/readyz") as resp:
                        if resp.status == 200:
                            pending.discard(name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=0.2)
        return not pending


async def _default_write_key(home: Path, admin_url: str, token: str) -> str | None:
    """The write key the tour uses: created once through the admin API, kept in the data folder."""
    path = home / "write-key"
    if path.exists():
        return path.read_text().strip()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        try:
            async with http.post(
                f"{admin_url}/v1/write-keys",
                json={"name": "default"},
                headers={"Authorization": f"Bearer {token}"},
            ) as resp:
                if resp.status != 201:
                    _say(f"could not create a default write key: {resp.status} {await resp.text()}")
                    return None
                secret = str((await resp.json())["secret"])
        except (aiohttp.ClientError, TimeoutError) as exc:
            _say(f"could not create a default write key: {exc}")
            return None
    write_private(path, secret)
    return secret


class SupervisedService:
    """One service process; restarted with a growing pause if it dies while Cairn is up."""

    def __init__(self, name: str, env: dict[str, str], service: str = "") -> None:
        self.name = name
        self.service = service or name
        """The service this process runs (``matcher`` for ``matcher-2``)."""
        self.env = env
        self.health_url = f"http://127.0.0.1:{env['CAIRN_HEALTH_PORT']}"
        self.pid: int | None = None
        self.on_start: Callable[[], object] | None = None
        """Called after each (re)start, once ``pid`` is the new process's."""

    async def run(self, stopping: asyncio.Event) -> None:
        pause = 0.0
        while not stopping.is_set():
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", f"cairn_{self.service}",
                env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop the services in order
            )  # fmt: skip
            self.pid = proc.pid
            if self.on_start is not None:
                self.on_start()
            ran_from = time.monotonic()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._relay_output(proc))
                exited = tg.create_task(proc.wait())
                stop = tg.create_task(stopping.wait())
                await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not exited.done():
                    await self._stop(proc)
                stop.cancel()
            if stopping.is_set():
                return
            # A service that ran a while comes back at once (its traffic is waiting); one that
            # keeps dying is given a doubling pause, so a crash loop does not spin.
            ran = time.monotonic() - ran_from
            pause = 0.0 if ran > RESTART_RESET else min(max(pause * 2, 0.5), 30.0)
            _say(f"{self.name} exited with code {proc.returncode}; restarting in {pause:.1f}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=pause)

    async def _relay_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        prefix = f"{self.name:<10}| ".encode()
        async for line in proc.stdout:
            sys.stdout.buffer.write(prefix + line)
            sys.stdout.buffer.flush()

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=SERVICE_STOP_TIMEOUT)
        except TimeoutError:
            _say(f"{self.name} did not stop in {SERVICE_STOP_TIMEOUT:.0f}s; killing it")
            proc.kill()
            await proc.wait()


def _say(text: str, who: str = "cairn") -> None:
    print(f"{who:<10}| {text}", flush=True)


def _print_summary(home: Path, state: LocalState, seconds: float) -> None:
    lines = [
        f"Cairn is up ({seconds:.1f}s). Data in {home}",
        f"  tracking API   {state.tracking_url}   (Segment-compatible: POST /v1/track, /v1/batch)",
        f"  write key      {state.write_key}   (HTTP Basic user, or writeKey in the body)",
        f"  admin API      {state.admin_url}   (token in {home / 'admin-token'})",
        f"  NATS           {state.nats_url}   (monitoring {state.nats_monitor_url})",
        f"  PostgreSQL     {_without_password(state.database_url)}",
        f"  mail sink      {state.sink_smtp}   (every email sent lands here)",
        f"  http sink      {state.sink_http}   (webhooks; GET /messages lists what arrived)",
        *(f"  {n:<14} {ep.health_url}/readyz" for n, ep in state.services.items()),
        "Check it with `cairn status`; stop it with Ctrl-C.",
    ]
    print("\n".join(lines), flush=True)


def _without_password(url: str) -> str:
    """A database URL fit to print: the password (in ``.cairn/postgres-password``) left out."""
    scheme, _, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    return f"{scheme}://{userinfo.split(':', 1)[0]}{at}{host}" if at else url
