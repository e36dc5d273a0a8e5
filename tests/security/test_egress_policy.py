"""The egress policy (cairn_dispatcher.egress) against a real HTTP server on this machine.

Every address a host resolves to is checked when the connection is made: loopback by literal, by
name and as an IPv4-mapped IPv6 literal is refused by default and reached only when the policy
lists the network; malformed and credential-carrying URLs are refused before any connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from cairn_dispatcher import egress


@pytest.fixture
async def port() -> AsyncIterator[int]:
    hits: list[str] = []
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="secret admin data")

    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    yield int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
    await runner.cleanup()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
async def test_loopback_is_refused_unless_listed(port: int, host: str) -> None:
    url = f"http://{host}:{port}/"
    async with egress.session() as http:
        with pytest.raises(egress.EgressRefused, match="loopback"):
            async with http.get(url, allow_redirects=False):
                pass
    allowed = egress.session(egress.EgressPolicy(("127.0.0.0/8",)))
    async with allowed as http, http.get(url, allow_redirects=False) as resp:
        assert resp.status == 200


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("169.254.169.254", "link-local"),
        ("10.0.0.5", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("fe80::1", "link-local"),
        ("fd00::1", "private"),
        ("::1", "loopback"),
    ],
)
def test_every_non_public_kind_is_named(address: str, kind: str) -> None:
    reason = egress.PUBLIC.refusal(address)
    assert reason is not None
    assert kind in reason
    assert egress.EgressPolicy(("0.0.0.0/0", "::/0")).refusal(address) is None


def test_public_addresses_pass_and_bad_urls_are_named() -> None:
    assert egress.PUBLIC.refusal("93.184.215.14") is None
    assert egress.PUBLIC.refusal("2606:2800:21f:cb07:6820:80da:af6b:8b2c") is None
    assert "not an http(s) URL" in (egress.check_url("file:///etc/passwd") or "")
    assert "credentials" in (egress.check_url("http://admin:pw@example.test/") or "")
    assert "no host" in (egress.check_url("http:///x") or "")
    with pytest.raises(ValueError, match="not a network"):
        egress.EgressPolicy(("nonsense",))


def test_sanitise_keeps_one_short_printable_line() -> None:
    assert egress.sanitise("a\r\nb\x00c  d", limit=200) == "a b c d"
    assert len(egress.sanitise("x" * 1000, limit=50)) == 50
