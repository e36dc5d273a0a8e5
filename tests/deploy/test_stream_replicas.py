"""CAIRN_STREAM_REPLICAS reaches JetStream, so the prod overlay's R3 streams are replicated."""

from __future__ import annotations

import nats.js.errors
import pytest
from nats.js.client import JetStreamContext

from cairn_common.bus import provision_topology
from cairn_common.settings import CommonSettings, SettingsError, load_settings
from cairn_common.topology import Topology

BASE = {"CAIRN_NATS_URL": "nats://127.0.0.1:1", "CAIRN_DATABASE_URL": "postgresql://x/y"}


async def test_streams_are_created_with_the_configured_replica_count(
    js: JetStreamContext, topology: Topology
) -> None:
    await provision_topology(js, topology, replicas=1)

    for spec in topology.streams():
        info = await js.stream_info(spec.name)
        assert info.config.num_replicas == 1


async def test_three_replicas_are_asked_of_nats_and_a_single_server_refuses_them(
    js: JetStreamContext, topology: Topology
) -> None:
    # The test server is one node: JetStream refuses R3, which shows the count is really sent.
    with pytest.raises(nats.js.errors.APIError):
        await provision_topology(js, topology, replicas=3)


def test_stream_replicas_default_to_one_and_are_bounded_by_jetstream() -> None:
    assert load_settings(CommonSettings, BASE).stream_replicas == 1
    assert (
        load_settings(CommonSettings, {**BASE, "CAIRN_STREAM_REPLICAS": "3"}).stream_replicas == 3
    )
    with pytest.raises(SettingsError, match="CAIRN_STREAM_REPLICAS must be between 1 and 5"):
        load_settings(CommonSettings, {**BASE, "CAIRN_STREAM_REPLICAS": "7"})
