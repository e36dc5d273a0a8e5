"""Each service's /metrics, scraped from real processes after a small workload: the series an
operator graphs are there, and count what happened."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from nats.js.client import JetStreamContext
from prometheus_client.parser import text_string_to_metric_families

from cairn_common.topology import Topology
from tests.dispatcher.support import LOOPBACK, HttpSink, Reply, apply, eventually
from tests.observability.support import OtlpCollector, start_system
from tests.support.engine import prepared, publish_journey
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.e2e

JOURNEY = {
    "kind": "Journey",
    "name": "metered",
    "trigger": {"event": "Signed Up"},
    "steps": [
        {"id": "hello", "send": {"channel": "webhook", "template": "hook"}},
        {"id": "broken", "send": {"channel": "webhook", "template": "no-such-template"}},
        {"id": "pause", "wait": "1s"},
    ],
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(proc: ServiceProcess) -> Samples:
    async with aiohttp.ClientSession() as http, http.get(f"{proc.health_url}/metrics") as resp:
        text = await resp.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``; -1 if there is none."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    return sum(found) if found else -1.0


@pytest.fixture
async def collector() -> AsyncIterator[OtlpCollector]:
    server = await OtlpCollector().start()
    yield server
    await server.stop()


@pytest.fixture
async def sink() -> AsyncIterator[HttpSink]:
    server = await HttpSink().start()
    yield server
    await server.stop()


async def test_every_service_exposes_the_series_an_operator_graphs(
    collector: OtlpCollector,
    sink: HttpSink,
    spawn: Callable[..., ServiceProcess],
    js: JetStreamContext,
    topology: Topology,
    database_url: str,
) -> None:
    pool = await prepared(database_url, js, topology)
    async with pool.acquire() as db:
        await apply(
            db,
            "Channel",
            "webhook",
            {"provider": "webhook", "endpoint": sink.url, "options": {"allow_networks": LOOPBACK}},
        )
        await apply(db, "Template", "hook", {"channel": "webhook", "body": '{"n": 1}'})
    await publish_journey(pool, JOURNEY)
    sink.script.append(Reply(status=503))  # the first call fails and is retried
    system = await start_system(
        spawn,
        pool,
        CAIRN_METRICS_SAMPLE_SECONDS="0.2",
        CAIRN_INSTANCES_GAUGE_SECONDS="0.2",
        CAIRN_RETRY_BASE_SECONDS="0.05",
        **collector.env(),
    )
    for user in ("u1", "u2"):
        await system.post("/v1/track", {"userId": user, "event": "Signed Up"})
    matcher = system.procs["matcher"]
    await eventually(
        lambda: _at_least(
            matcher, "cairn_journey_instances", 2, journey="metered", status="completed"
        )
    )
    await eventually(lambda: len(sink.requests) == 3)

    ingest = await scrape(system.procs["ingest"])
    assert value(ingest, "cairn_ingest_events_total", outcome="accepted") == 2
    assert value(ingest, "cairn_ingest_http_request_seconds_count") >= 2

    m = await scrape(matcher)
    assert value(m, "cairn_matcher_inputs_total", kind="Event", outcome="applied") == 2
    assert value(m, "cairn_matcher_event_to_delivery_request_seconds_count") == 2
    assert value(m, "cairn_matcher_batch_seconds_count") >= 1
    assert value(m, "cairn_journey_instances", journey="metered", status="completed") == 2
    assert value(m, "cairn_consumer_pending_messages", consumer="matcher-0") >= 0
    assert value(m, "cairn_consumer_ack_pending_messages", consumer="matcher-3") >= 0

    scheduler = await scrape(system.procs["scheduler"])
    assert value(scheduler, "cairn_scheduler_timers_fired_total") == 2
    assert value(scheduler, "cairn_scheduler_fire_lateness_seconds_count") == 2
    assert value(scheduler, "cairn_scheduler_timers_pending") >= 0

    d = await scrape(system.procs["dispatcher"])
    assert value(d, "cairn_deliveries_total", target="webhook", outcome="sent") == 2
    assert value(d, "cairn_deliveries_total", target="webhook", outcome="retrying") == 1
    assert value(d, "cairn_deliveries_total", target="webhook", outcome="dead_lettered") == 2
    assert value(d, "cairn_dead_letters_total", consumer="dispatcher") == 2
    assert value(d, "cairn_dispatcher_provider_call_seconds_count", result="retryable") == 1
    assert value(d, "cairn_dispatcher_provider_call_seconds_count", result="sent") == 2
    assert value(d, "cairn_dispatcher_request_to_sent_seconds_count", target="webhook") == 2
    assert value(d, "cairn_consumer_pending_messages", consumer="dispatcher") >= 0

    # The dispatcher's log lines name the trace of the request that caused them.
    servers = await collector.until(2, service="cairn-ingest", kind="SERVER")
    requests = {s.trace_id for s in servers}
    dead = [
        line
        for line in map(json.loads, _json_lines(system.procs["dispatcher"].output()))
        if line["event"] == "delivery dead_lettered"
    ]
    assert len(dead) == 2
    assert {line["trace_id"] for line in dead} == requests
    await pool.close()


def _json_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("{")]


async def _at_least(proc: ServiceProcess, name: str, n: float, **labels: str) -> bool:
    return value(await scrape(proc), name, **labels) >= n
