"""Settings: one frozen struct per service, read once from ``CAIRN_*`` environment variables.

A field ``nats_url`` is read from ``CAIRN_NATS_URL``. A field without a default is required.
A bad or missing value raises ``SettingsError`` naming the variable,
and the service stops with that message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import msgspec

from cairn_common.topology import (
    DEFAULT_DEAD_LETTERS_MAX_BYTES,
    DEFAULT_DELIVERIES_MAX_BYTES,
    DEFAULT_INPUTS_MAX_BYTES,
    MIB,
)

PREFIX = "CAIRN_"


class SettingsError(Exception):
    """A configuration problem, worded for the operator who has to fix the environment."""


class CommonSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What every service needs. Service settings subclass this and add their own fields."""

    nats_url: str
    """One NATS server, or several of one cluster, comma-separated."""
    database_url: str
    nats_user: str = ""
    """This service's NATS user (``cairn_common.nats_auth``); empty on a server without users."""
    nats_password: str = ""
    nats_ca_file: str = ""
    """The CA certificate that signed the NATS servers' (PEM). With it, or with a ``tls://`` URL,
    the connection is TLS and the server's certificate is verified; deploy/k8s's prod overlay sets
    both."""
    namespace: str = "cairn"
    """Prefix of every stream and subject, so several Cairns (or tests) can share one NATS."""
    partitions: int = 64
    stream_replicas: int = 1
    """JetStream replicas of every stream: 3 on a three-node NATS cluster, 1 on a single server."""
    health_host: str = "127.0.0.1"
    health_port: int = 0
    """Port for /healthz, /readyz and /metrics; 0 picks a free one (logged at start)."""
    shutdown_grace_seconds: float = 10.0
    """In-flight work gets this long to finish on SIGTERM; keep it below the pod's grace period."""
    migrate_on_start: bool = True
    db_pool_min: int = 1
    db_pool_max: int = 10
    fetch_batch: int = 256
    fetch_timeout_seconds: float = 1.0
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    service_name: str = ""
    """Set by each service; appears in logs, traces and metrics."""
    metrics_sample_seconds: float = 5.0
    """How often gauges read from NATS or PostgreSQL (consumer lag, instances) are refreshed."""
    inputs_max_bytes: int = DEFAULT_INPUTS_MAX_BYTES
    """Bound of the inputs stream: the backlog the matcher has not committed yet. When it is
    full, ingest answers 503 (clients retry) and the scheduler and dispatcher wait."""
    deliveries_max_bytes: int = DEFAULT_DELIVERIES_MAX_BYTES
    """Bound of the deliveries work queue; when full, the matcher's outbox waits."""
    dead_letters_max_bytes: int = DEFAULT_DEAD_LETTERS_MAX_BYTES
    """Bound of the dead letters; when full, the oldest go first (30 days at most in any case)."""

    def __post_init__(self) -> None:
        if not 1 <= self.partitions <= 4096:
            raise SettingsError("CAIRN_PARTITIONS must be between 1 and 4096")
        if not 1 <= self.stream_replicas <= 5:
            raise SettingsError("CAIRN_STREAM_REPLICAS must be between 1 and 5 (JetStream's limit)")
        for name in ("inputs_max_bytes", "deliveries_max_bytes", "dead_letters_max_bytes"):
            if getattr(self, name) < MIB:
                raise SettingsError(f"{env_name(name)} must be at least {MIB} (1 MiB)")
        if not self.namespace.replace("_", "").replace("-", "").isalnum():
            raise SettingsError(
                f"CAIRN_NAMESPACE={self.namespace!r} may hold only letters, digits, '-' and '_'"
            )


S = TypeVar("S", bound=msgspec.Struct)


def env_name(field: str) -> str:
    return PREFIX + field.upper()


def load_settings(cls: type[S], env: Mapping[str, str] | None = None, **overrides: Any) -> S:
    """Build ``cls`` from the environment. Every problem is collected and reported at once."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    missing: list[str] = []
    for field in msgspec.structs.fields(cls):
        name = env_name(field.name)
        if field.name in overrides:
            raw[field.name] = overrides[field.name]
        elif name in env:
            raw[field.name] = env[name]
        elif field.required:
            missing.append(name)
    problems = [f"{name} is required but not set" for name in missing]
    values: dict[str, Any] = {}
    for key, value in raw.items():
        field_type = next(f.type for f in msgspec.structs.fields(cls) if f.name == key)
        try:
            values[key] = msgspec.convert(value, field_type, strict=False)
        except msgspec.ValidationError as exc:
            problems.append(f"{env_name(key)}={value!r} is invalid: {_plain(exc)}")
    if problems:
        raise SettingsError("; ".join(problems))
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise SettingsError(str(exc)) from None


def _plain(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    return text.split(" - at ")[0].replace("Expected", "expected")
