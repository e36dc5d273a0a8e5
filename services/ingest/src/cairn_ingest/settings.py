"""Ingest's settings, read from CAIRN_* environment variables once at start."""

from cairn_common.settings import CommonSettings


class Settings(CommonSettings, frozen=True, kw_only=True):
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    """The Tracking API (Segment-compatible) and CloudEvents endpoint."""
    admin_host: str = "127.0.0.1"
    admin_port: int = 8090
    admin_token: str = ""
    """The admin API (control plane) listener; served only when CAIRN_ADMIN_TOKEN is set."""
