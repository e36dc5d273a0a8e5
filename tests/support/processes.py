"""Run Cairn's services as real subprocesses, the way Kubernetes and ``cairn up`` run them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from cairn_cli.local import free_port


class ServiceProcess:
    """``python -m <module>`` with CAIRN_* settings; output goes to a log file shown on failure."""

    def __init__(self, module: str, env: Mapping[str, str], log_dir: Path) -> None:
        self.module = module
        self.health_port = free_port()
        self.env = {**os.environ, **env, "CAIRN_HEALTH_PORT": str(self.health_port)}
        # Never the default 8080/8090: a developer's `cairn up` may hold them.
        for port_var in ("CAIRN_HTTP_PORT", "CAIRN_ADMIN_PORT"):
            self.env.setdefault(port_var, str(free_port()))
        self.env.setdefault("CAIRN_LOG_FORMAT", "json")
        self.log_path = log_dir / f"{module}-{self.health_port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}"

    def start(self) -> ServiceProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        return self

    async def wait_ready(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout), aiohttp.ClientSession() as http:
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise AssertionError(f"{self.module} exited early:\n{self.output()}")
                try:
                    async with http.get(f"{self.health_url}/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()

    async def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            while self.proc.poll() is None:
                await asyncio.sleep(0.05)
        return self.proc.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
