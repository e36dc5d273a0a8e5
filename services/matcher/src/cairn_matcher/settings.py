"""The matcher's settings, read from CAIRN_* environment variables once at start."""

import os
import socket

import msgspec

from cairn_common.settings import CommonSettings, SettingsError


def _default_replica() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(CommonSettings, frozen=True, kw_only=True):
    replica_id: str = msgspec.field(default_factory=_default_replica)
    """Names this replica in partition leases; the pod name in Kubernetes."""
    lease_ttl_seconds: float = 6.0
    """A dead replica's partitions are taken over this long after its last renewal."""
    lease_renew_seconds: float = 2.0
    max_cached_profiles: int = 100_000
    """Profile actors kept in memory; the least recently used are evicted beyond this (about
    1.7 KB each with one running instance: 100,000 keep the matcher near 270 MB RSS)."""
    outbox_relay_after_seconds: float = 5.0
    """Outbox rows older than this were not published right after their commit; the relay
    publishes them."""
    journeys_reload_seconds: float = 30.0
    """Fallback reload period; ``NOTIFY cairn_journeys`` reloads at once."""
    timer_notify_within_seconds: float = 60.0
    """A commit setting a timer due within this wakes the schedulers (``NOTIFY cairn_timers``)."""
    consumer_ack_wait_seconds: float = 60.0
    instances_gauge_seconds: float = 30.0
    """How often the replica holding partition 0 counts journey instances by status for
    /metrics (a scan of ``journey_instances``, so not too often)."""
    delivery_events_retention_days: float = 400.0
    """``delivery_events`` (which make delivery outcomes, opens and clicks count once) are kept
    this long; the analytics counters are kept regardless."""
    committers: int = 4
    """Transactions in flight at once (group commit); each takes every batch waiting."""
    max_commit_inputs: int = 2_000
    """Most inputs one transaction takes."""
    max_profile_traits_bytes: int = 65_536
    """A profile's traits may take this much (as JSON); an identify that would
    grow them past it is dead-lettered with the reason. Every delivery request carries them."""
    inputs_trim_seconds: float = 30.0
    """How often each owned partition's inputs below its committed sequence are purged from the
    inputs stream (PostgreSQL holds their effects), so CAIRN_INPUTS_MAX_BYTES bounds the backlog,
    not history."""
    winners_seconds: float = 30.0
    """How often the replica holding partition 0 looks for split experiments whose winner is
    due (``winner: {after, sample}``)."""
    stalled_after_seconds: float = 60.0
    """A partition whose batch has waited this long to commit (PostgreSQL down or locked, a failure
    that keeps coming back) makes the matcher not ready: ``/readyz`` and ``cairn status`` name
    it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.lease_renew_seconds < self.lease_ttl_seconds:
            raise SettingsError(
                "CAIRN_LEASE_RENEW_SECONDS must be positive and below CAIRN_LEASE_TTL_SECONDS"
            )
        if self.delivery_events_retention_days < 8:
            raise SettingsError(
                "CAIRN_DELIVERY_EVENTS_RETENTION_DAYS must be at least 8 (longer than a"
                " redelivery can come late)"
            )
        if self.committers < 1 or self.max_commit_inputs < 1:
            raise SettingsError("CAIRN_COMMITTERS and CAIRN_MAX_COMMIT_INPUTS must be at least 1")
        if self.max_profile_traits_bytes < 1024:
            raise SettingsError("CAIRN_MAX_PROFILE_TRAITS_BYTES must be at least 1024")
        if self.inputs_trim_seconds <= 0:
            raise SettingsError("CAIRN_INPUTS_TRIM_SECONDS must be positive")
        if self.winners_seconds <= 0:
            raise SettingsError("CAIRN_WINNERS_SECONDS must be positive")
        if self.stalled_after_seconds <= 0:
            raise SettingsError("CAIRN_STALLED_AFTER_SECONDS must be positive")
        if self.max_cached_profiles < 1:
            raise SettingsError("CAIRN_MAX_CACHED_PROFILES must be at least 1")
