"""The dispatcher's settings, read from CAIRN_* environment variables once at start."""

import os
import socket

import msgspec

from cairn_common.settings import CommonSettings, SettingsError


def _default_replica() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(CommonSettings, frozen=True, kw_only=True):
    replica_id: str = msgspec.field(default_factory=_default_replica)
    """Names this replica in the ledger's claims on deliveries being sent (decision 0064): a
    replica restarted under the same name takes its own claims back at once. The pod name in
    Kubernetes."""
    claim_seconds: float = 3.0
    """How long a claim on a delivery being sent lasts unless renewed (it is, every third of
    this, while the send and its ledger write are under way): a killed replica's claims lapse
    this long after its last renewal, and another replica may then send them."""
    tracking_base_url: str = "http://127.0.0.1:8080"
    """Where ingest serves /t/o, /t/c and /t/u (open pixel, click and unsubscribe links)."""
    tracking_secret: str = ""
    """HMAC key of tracking tokens (shared with ingest). Empty: no open/click tracking is written,
    and marketing emails get no unsubscribe link, so set it in production."""
    max_attempts: int = 6
    """Provider attempts per delivery before it is dead-lettered (429, 5xx and timeouts retry)."""
    retry_base_seconds: float = 2.0
    """First retry delay; doubles each attempt with +-50% jitter; Retry-After wins when longer."""
    retry_max_seconds: float = 3600.0
    provider_timeout_seconds: float = 10.0
    provider_concurrency: int = 256
    """In-flight sends per provider (one aiohttp session / SMTP pool per provider)."""
    smtp_pool_size: int = 16
    """Open SMTP connections per email channel."""
    function_timeout_seconds: float = 2.0
    """Wall-clock budget of loading a destination function's source (its top-level code) and of
    each call; past it the function's worker process is killed."""
    function_memory_mb: int = 64
    progress_interval_seconds: float = 0.5
    """How often a batch in flight tells JetStream it is still being worked on: well below the
    consumer's ack wait (``cairn_common.topology.DISPATCHER_ACK_WAIT``, 3 s), so a slow provider
    call is never redelivered to another replica, while a killed dispatcher's batch is."""
    ledger_retry_seconds: float = 300.0
    """How long a batch whose provider calls were made waits for the database to record them
    (retrying with backoff, the batch kept in progress) before it gives up and is redelivered."""
    documents_ttl_seconds: float = 5.0
    """How long Channel/Destination/Template documents are cached before re-reading."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.max_attempts <= 10:
            raise SettingsError("CAIRN_MAX_ATTEMPTS must be between 1 and 10 (the consumer's max)")
        if not 0.5 <= self.claim_seconds <= 60:
            raise SettingsError("CAIRN_CLAIM_SECONDS must be between 0.5 and 60")
        if self.provider_concurrency < 1 or self.smtp_pool_size < 1:
            raise SettingsError("CAIRN_PROVIDER_CONCURRENCY and CAIRN_SMTP_POOL_SIZE must be >= 1")
