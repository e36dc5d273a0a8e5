"""Ingest's settings, read from CAIRN_* environment variables once at start."""

from typing import Literal

from cairn_common.settings import CommonSettings, SettingsError


class Settings(CommonSettings, frozen=True, kw_only=True):
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    """The Tracking API (Segment-compatible), CloudEvents and email tracking links."""
    admin_host: str = "127.0.0.1"
    admin_port: int = 8090
    admin_token: str = ""
    """The admin API (control plane, cairn_control) listener; served only when
    CAIRN_ADMIN_TOKEN is set (decision 0004)."""

    # ---- limits (Segment's are the floor) --------------------------------------------------------
    max_event_bytes: int = 32 * 1024
    """One event, as JSON; a bigger one is refused with 413 (in a batch: that event only)."""
    max_batch_bytes: int = 500 * 1024
    """One request body after gzip decompression; a bigger one is refused whole with 413."""
    max_batch_events: int = 2500
    max_message_id_length: int = 256
    max_profile_id_length: int = 1024

    # ---- delivery into JetStream ----------------------------------------------------------------
    publish_timeout_seconds: float = 5.0
    """How long a request waits for JetStream's acknowledgements before answering 503."""

    # ---- deduplication beyond JetStream's window ------------------------------------------------
    dedupe_retention_hours: float = 48.0
    """messageIds are remembered this long (at least 24 h); older rows are pruned."""
    dedupe_prune_interval_seconds: float = 600.0

    # ---- write keys -----------------------------------------------------------------------------
    write_key_refresh_seconds: float = 30.0
    """Full refresh of the key cache (NOTIFY cairn_write_keys refreshes it at once too)."""

    # ---- trigger schemas ------------------------------------------------------------------------
    trigger_schema_mode: Literal["reject", "flag", "off"] = "flag"
    """What to do with an event that violates its Trigger schema: refuse it, or keep it with
    ``context.cairn.schema_violations``."""
    trigger_refresh_seconds: float = 30.0

    # ---- email tracking links -------------------------------------------------------------------
    tracking_secret: str = ""
    """The secret open/click/unsubscribe links are sealed with (shared with the dispatcher).
    Empty: the /t/ endpoints answer 404. Retired secrets may follow, comma-separated, still
    honoured: keep one for at least ``tracking_link_ttl_days`` after a rotation."""
    tracking_backlog_limit: int = 100_000
    """Tracking events (opens, clicks) kept in memory while JetStream cannot take them, published
    as soon as it can (about 1 KB each); beyond this, new ones are lost and counted."""
    tracking_link_ttl_days: float = 180.0
    """How long an open pixel or a click link works after the email was sent; past it 410."""
    tracking_unsubscribe_ttl_days: float = 0.0
    """How long an unsubscribe link works; 0: as long as its secret is honoured."""
    tracking_fallback_url: str = ""
    """Where an expired or unknown click or unsubscribe link sends the person (the shop's home
    page, say) instead of a plain 410/404 page. Never a URL a token carries."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_event_bytes <= 0 or self.max_batch_bytes < self.max_event_bytes:
            raise SettingsError(
                "CAIRN_MAX_BATCH_BYTES must be at least CAIRN_MAX_EVENT_BYTES, both positive"
            )
        if self.max_batch_events <= 0:
            raise SettingsError("CAIRN_MAX_BATCH_EVENTS must be positive")
        if self.dedupe_retention_hours < 24:
            raise SettingsError("CAIRN_DEDUPE_RETENTION_HOURS must be at least 24")
        if self.tracking_link_ttl_days <= 0 or self.tracking_unsubscribe_ttl_days < 0:
            raise SettingsError(
                "CAIRN_TRACKING_LINK_TTL_DAYS must be positive, "
                "CAIRN_TRACKING_UNSUBSCRIBE_TTL_DAYS zero (never) or positive"
            )
        if self.tracking_fallback_url and not self.tracking_fallback_url.startswith(
            ("https://", "http://")
        ):
            raise SettingsError("CAIRN_TRACKING_FALLBACK_URL must be an http(s) URL")
        if self.publish_timeout_seconds <= 0:
            raise SettingsError("CAIRN_PUBLISH_TIMEOUT_SECONDS must be positive")

    @property
    def tracking_secrets(self) -> list[str]:
        return [s.strip() for s in self.tracking_secret.split(",") if s.strip()]
