"""What the observability tests share: an OTLP/HTTP collector that records spans, the four
services started together, and the Tracking API client."""

from __future__ import annotations

import asyncio
import base64
import gzip
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
import asyncpg
import msgspec
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from cairn_cli.local import free_port
from cairn_control.keys import create_key
from tests.support.processes import ServiceProcess

PARTITIONS = "4"
ADMIN_TOKEN = "test-admin-token"
KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


class Link(msgspec.Struct, frozen=True):
    trace_id: str
    span_id: str


class RecordedSpan(msgspec.Struct, frozen=True):
    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    links: tuple[Link, ...]

    @property
    def destination(self) -> str:
        return str(self.attributes.get("messaging.destination.name", ""))


def _value(v: AnyValue) -> Any:
    field = v.WhichOneof("value")
    return getattr(v, field) if field else None


class OtlpCollector:
    """An OTLP/HTTP (protobuf) trace receiver, as Jaeger or an OpenTelemetry Collector would be."""

    def __init__(self) -> None:
        self.spans: list[RecordedSpan] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        for rs in export.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        RecordedSpan(
                            service=str(resource.get("service.name", "")),
                            name=s.name,
                            kind=KINDS.get(s.kind, str(s.kind)),
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            links=tuple(Link(k.trace_id.hex(), k.span_id.hex()) for k in s.links),
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def start(self) -> OtlpCollector:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def env(self) -> dict[str, str]:
        """What a service needs to export here, promptly."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50"}

    def find(self, **where: Any) -> list[RecordedSpan]:
        """Spans whose fields equal ``where`` (``destination_suffix`` matches the end of the
        messaging destination)."""
        suffix = where.pop("destination_suffix", None)
        return [
            s
            for s in self.spans
            if all(getattr(s, k) == v for k, v in where.items())
            and (suffix is None or s.destination.endswith(suffix))
        ]

    async def until(self, count: int, timeout: float = 30.0, **where: Any) -> list[RecordedSpan]:
        async with asyncio.timeout(timeout):
            while len(found := self.find(**dict(where))) < count:
                await asyncio.sleep(0.05)
        return found


class System:
    """Ingest, matcher, scheduler and dispatcher as real processes of one deployment."""

    def __init__(
        self,
        procs: dict[str, ServiceProcess],
        http_port: int,
        admin_port: int,
        write_key: str,
        restart: Callable[[str], ServiceProcess] | None = None,
    ) -> None:
        self.procs = procs
        self._restart = restart
        self.http_port = http_port
        self.admin_port = admin_port
        self.write_key = write_key

    async def start(self, name: str) -> None:
        """Start a service this system was started without."""
        assert self._restart is not None
        self.procs[name] = self._restart(name)
        await self.procs[name].wait_ready()

    async def kill_and_restart(self, name: str) -> None:
        """SIGKILL the service (no shutdown at all), then start it again with the same settings."""
        assert self._restart is not None
        old = self.procs[name]
        old.kill()
        await old.wait_exit()
        self.procs[name] = self._restart(name)
        await self.procs[name].wait_ready()

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    async def admin(self, path: str) -> Any:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.admin_url}{path}", headers=headers) as resp,
        ):
            assert resp.status == 200, await resp.text()
            return await resp.json()

    @property
    def tracking_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def post(self, path: str, body: dict[str, Any]) -> None:
        token = base64.b64encode(f"{self.write_key}:".encode()).decode()
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{self.tracking_url}{path}",
                json=body,
                headers={"Authorization": f"Basic {token}"},
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()

    async def get(self, url: str) -> int:
        async with aiohttp.ClientSession() as http, http.get(url, allow_redirects=False) as resp:
            await resp.read()
            return resp.status


async def start_system(
    spawn: Callable[..., ServiceProcess],
    pool: asyncpg.Pool,
    *,
    services: Sequence[str] = ("ingest", "matcher", "scheduler", "dispatcher"),
    env_of: Mapping[str, Mapping[str, str]] | None = None,
    **env: str,
) -> System:
    """The services as real processes, each with ``env`` and its own ``env_of[name]``."""
    write_key = (await create_key(pool, "shop")).secret
    http_port, admin_port = free_port(), free_port()
    common = {
        "CAIRN_PARTITIONS": PARTITIONS,
        "CAIRN_TRACKING_SECRET": "test-tracking-secret",
        "CAIRN_TRACKING_BASE_URL": f"http://127.0.0.1:{http_port}",
        "CAIRN_FETCH_TIMEOUT_SECONDS": "0.2",
        "CAIRN_DOCUMENTS_TTL_SECONDS": "0",
        **env,
    }
    own = {
        "ingest": {
            "CAIRN_HTTP_PORT": str(http_port),
            "CAIRN_ADMIN_PORT": str(admin_port),
            "CAIRN_ADMIN_TOKEN": ADMIN_TOKEN,
        },
    }

    def start(name: str) -> ServiceProcess:
        return spawn(f"cairn_{name}", **common, **own.get(name, {}), **(env_of or {}).get(name, {}))

    procs = {name: start(name) for name in services}
    await asyncio.gather(*(p.wait_ready() for p in procs.values()))
    return System(procs, http_port, admin_port, write_key, start)
