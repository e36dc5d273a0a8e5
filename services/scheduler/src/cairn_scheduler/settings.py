"""The scheduler's settings, read from CAIRN_* environment variables once at start."""

import os
import socket

import msgspec

from cairn_common.settings import CommonSettings, SettingsError


def _default_replica() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(CommonSettings, frozen=True, kw_only=True):
    lookahead_seconds: float = 5.0
    """Timers due within this window are claimed, held in memory and fired on time."""
    claim_batch: int = 5_000
    """Timers claimed per statement while filling the lookahead."""
    max_held_timers: int = 200_000
    """Upper bound of timers held in memory; a backlog beyond it is claimed as firing frees room."""
    fire_batch: int = 1_000
    """Most timers published and deleted together."""
    fire_concurrency: int = 4
    """Batches of due timers in flight at once."""
    claim_grace_seconds: float = 5.0
    """A claimed timer still unfired this long after it was due (its replica died) is claimed
    again by another replica."""
    rescan_seconds: float = 1.0
    """Fallback scan period; a timer set within the lookahead wakes the scheduler at once
    through ``NOTIFY cairn_timers``."""
    full_scan_seconds: float = 2.0
    """Between scans of the whole lookahead window (the others start where the last ended)."""
    pending_gauge_seconds: float = 15.0
    """How often ``cairn_scheduler_timers_pending`` is refreshed from the database."""
    replica_id: str = msgspec.field(default_factory=_default_replica)
    """Names this replica in timer claims; the pod name in Kubernetes."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lookahead_seconds <= 0:
            raise SettingsError("CAIRN_LOOKAHEAD_SECONDS must be positive")
        if self.claim_batch < 1 or self.fire_batch < 1:
            raise SettingsError("CAIRN_CLAIM_BATCH and CAIRN_FIRE_BATCH must be at least 1")
        if self.max_held_timers < self.claim_batch:
            raise SettingsError("CAIRN_MAX_HELD_TIMERS must be at least CAIRN_CLAIM_BATCH")
