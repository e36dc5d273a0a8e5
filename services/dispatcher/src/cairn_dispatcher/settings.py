"""The dispatcher's settings, read from CAIRN_* environment variables once at start."""

from cairn_common.settings import CommonSettings


class Settings(CommonSettings, frozen=True, kw_only=True):
    pass
