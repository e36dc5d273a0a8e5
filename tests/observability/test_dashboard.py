"""The Grafana dashboard shipped in deploy/grafana graphs only series the services export."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/cairn-overview.json"
MODULES = [
    "cairn_common.observability", "cairn_common.lag", "cairn_ingest.http_api",
    "cairn_ingest.publisher", "cairn_matcher.engine", "cairn_matcher.housekeeping",
    "cairn_scheduler.metrics", "cairn_dispatcher.handlers",
]  # fmt: skip
SUFFIXES = ("", "_total", "_bucket", "_count", "_sum")


def test_every_series_the_dashboard_queries_is_exported_by_a_service() -> None:
    for module in MODULES:
        importlib.import_module(module)
    exported = {f.name + suffix for f in REGISTRY.collect() for suffix in SUFFIXES}
    exprs = [
        target["expr"]
        for panel in json.loads(DASHBOARD.read_text())["panels"]
        for target in panel["targets"]
    ]
    queried = {name for expr in exprs for name in re.findall(r"\bcairn_[a-z_]+", expr)}
    assert len(queried) >= 12
    assert queried - exported == set()
