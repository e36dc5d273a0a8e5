"""NATS over TLS: a service verifies the server, and nothing crosses the wire in clear text
(issue 11, item 1; deploy/k8s's prod overlay runs NATS this way).

A NATS server of the test's own requires TLS with a certificate for 127.0.0.1. A real ingest
process, given the CA (``CAIRN_NATS_CA_FILE``) and a ``tls://`` URL, stores an event there; a
client that does not trust that CA, and a plain ``nats://`` client, are refused before they could
send credentials or read anything.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from cairn_cli.local import LocalNats
from cairn_common.bus import connect, provision_topology, tls_context
from cairn_common.messages import Event, decode
from cairn_common.topology import Topology
from tests.dispatcher.support import self_signed_tls
from tests.ingest.conftest import Ingest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tls_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalNats, Path]]:
    directory = tmp_path_factory.mktemp("nats-tls")
    self_signed_tls(directory)
    server = LocalNats(
        directory / "data",
        tls=(directory / "cert.pem", directory / "key.pem"),
    )
    server.start(directory / "nats.log")
    try:
        yield server, directory / "cert.pem"
    finally:
        server.stop()


async def test_services_verify_the_nats_server_and_plain_clients_are_refused(
    tls_nats: tuple[LocalNats, Path],
    ingest_process: Callable[..., Any],
    topology: Topology,
    tmp_path: Path,
) -> None:
    server, ca = tls_nats
    assert server.url.startswith("tls://")
    nc = await connect(server.url, name="test", ca_file=str(ca))
    try:
        js = nc.jetstream()
        await provision_topology(js, topology)
        ingest: Ingest = await ingest_process(CAIRN_NATS_URL=server.url, CAIRN_NATS_CA_FILE=str(ca))
        auth = base64.b64encode(f"{ingest.write_key}:".encode()).decode()
        event = {"userId": "u1", "event": "Cart Abandoned", "messageId": "over-tls"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{ingest.url}/v1/track", json=event, headers={"Authorization": f"Basic {auth}"}
            ) as resp,
        ):
            assert resp.status == 200
        info = await js.stream_info(topology.inputs_stream)
        msg = await js.get_msg(topology.inputs_stream, info.state.last_seq)
        stored = decode(msg.data or b"")
        assert isinstance(stored, Event)
        assert stored.message_id == "over-tls"
    finally:
        await nc.close()

    # A CA that did not sign the server's certificate, the system's CAs, or no TLS at all: the
    # connection fails at the handshake, before any credential or message could cross.
    other = tmp_path / "other"
    other.mkdir()
    self_signed_tls(other)
    attempts = {
        "another CA": (server.url, str(other / "cert.pem")),
        "system CAs": (server.url, ""),
        "plain nats://": (server.url.replace("tls://", "nats://"), ""),
    }
    for what, (url, ca_file) in attempts.items():
        refused = await _refusal(url, ca_file)
        assert refused is not None, what
        assert "CERTIFICATE_VERIFY_FAILED" in refused, (what, refused)


async def _refusal(url: str, ca_file: str) -> str | None:
    """Why one connection attempt failed, or ``None`` if it succeeded."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(repr(exc))

    try:
        client = await nats.connect(
            servers=[url], tls=tls_context(url, ca_file), allow_reconnect=False,
            connect_timeout=3, max_reconnect_attempts=0, error_cb=on_error,
        )  # fmt: skip
    except Exception as exc:  # nats-py raises several kinds; the reason is what matters
        return " ".join([repr(exc), *errors])
    await client.close()
    return None
