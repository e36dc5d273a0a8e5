"""One egress policy for every outbound request whose address comes from data or from user code.

Webhook URLs taken from events, Web Push endpoints taken from traits, destination base URLs and a
destination function's ``fetch`` are all addresses an attacker may choose. Each goes out through a
connector built here, which checks every address the host resolves to *at connect time* (so a DNS
answer that changes between a check and the connection, "DNS rebinding", gains nothing) and
refuses loopback, link-local (cloud metadata at 169.254.169.254), private, shared (CGNAT),
multicast, reserved and unspecified addresses, unless the channel's settings list the network
explicitly (``allow_networks: ["127.0.0.0/8"]``, as the test sinks on this machine need).

Redirects are never followed by this layer: a caller passes ``allow_redirects=False`` and treats a
3xx as the outcome, or follows it by hand and checks the next hop (destination functions).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
from aiohttp.abc import ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = frozenset({"http", "https"})


class EgressRefused(aiohttp.ClientConnectionError):
    """An outbound request to an address the policy does not allow; ``reason`` says which and why.

    A ``ClientConnectionError`` so that code catching aiohttp's errors sees it, but callers that
    care (a webhook's outcome) catch it first: a refused address is a permanent failure, never a
    retry."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EgressPolicy(msgspec.Struct, frozen=True):
    """Which non-public networks one channel, destination or function may reach."""

    allow_networks: tuple[str, ...] = ()
    """CIDRs allowed even though they are not public, e.g. ``("127.0.0.0/8", "10.1.0.0/16")``."""

    def __post_init__(self) -> None:
        for cidr in self.allow_networks:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"allow_networks: {cidr!r} is not a network ({exc})") from None

    def networks(self) -> list[IPNetwork]:
        return [ipaddress.ip_network(cidr, strict=False) for cidr in self.allow_networks]

    def refusal(self, address: str) -> str | None:
        """Why ``address`` (an IP literal) may not be reached, or ``None`` if it may."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        kind = non_public_kind(ip)
        if kind is None:
            return None
        if any(ip in net for net in self.networks()):
            return None
        return f"{address} is a {kind} address, which this channel's allow_networks does not list"


PUBLIC = EgressPolicy()
"""Public internet only: the default for everything built from data."""


def non_public_kind(ip: IPAddress) -> str | None:
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "shared (CGNAT)"
    if ip.is_private:
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return None


_SHARED = ipaddress.ip_network("100.64.0.0/10")


def check_url(url: str) -> str | None:
    """Why ``url`` cannot be requested at all (scheme, no host, credentials), or ``None``.

    Addresses are checked later, by the connector, against what the host actually resolves to."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        return f"{url!r} is not a valid URL ({exc})"
    if parts.scheme not in SCHEMES:
        return f"{url!r} is not an http(s) URL"
    if not parts.hostname:
        return f"{url!r} has no host"
    if parts.username is not None or parts.password is not None:
        return f"{url!r} carries credentials in its address"
    return None


class EgressConnector(aiohttp.TCPConnector):
    """A ``TCPConnector`` that connects only to addresses its policy allows.

    The check is made on the resolved addresses of every connection (IP literals included), after
    DNS and before connecting; addresses the policy refuses are dropped, and when none is left the
    request fails with ``EgressRefused``."""

    def __init__(self, policy: EgressPolicy = PUBLIC, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy = policy

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Any] | None = None
    ) -> list[ResolveResult]:
        results = await super()._resolve_host(host, port, traces)
        allowed: list[ResolveResult] = []
        reasons: list[str] = []
        for result in results:
            reason = self.policy.refusal(result["host"])
            if reason is None:
                allowed.append(result)
            else:
                reasons.append(reason)
        if not allowed:
            raise EgressRefused(f"refused to connect to {host}: {'; '.join(reasons)}")
        return allowed


def session(
    policy: EgressPolicy = PUBLIC,
    *,
    timeout: aiohttp.ClientTimeout | None = None,
    limit: int = 100,
) -> aiohttp.ClientSession:
    """A client session for requests built from data. Pass ``allow_redirects=False`` to each
    request: a redirect is an outcome, not an instruction."""
    connector = EgressConnector(policy, limit=limit, ttl_dns_cache=300, family=socket.AF_UNSPEC)
    return aiohttp.ClientSession(connector=connector, timeout=timeout or aiohttp.ClientTimeout(30))


def sanitise(text: str, limit: int = 200) -> str:
    """A short, single-line, printable version of a remote party's text, for logs and the
    ledger: control characters become spaces and anything past ``limit`` characters is cut."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text)
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"
