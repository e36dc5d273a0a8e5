"""Ingest's settings, read from CAIRN_* environment variables once at start."""

from cairn_common.settings import CommonSettings


class Settings(CommonSettings, frozen=True, kw_only=True):
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    """The Tracking API (Segment-compatible) and CloudEvents endpoint."""
