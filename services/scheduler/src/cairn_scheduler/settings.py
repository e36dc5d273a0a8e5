"""The scheduler's settings, read from CAIRN_* environment variables once at start."""

from cairn_common.settings import CommonSettings


class Settings(CommonSettings, frozen=True, kw_only=True):
    lookahead_seconds: float = 5.0
    """Timers due within this window are held in memory and fired on time."""
