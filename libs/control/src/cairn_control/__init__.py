"""cairn_control: the journey lifecycle in PostgreSQL and the admin HTTP API."""

from cairn_control.api import ROUTES, admin_app

__all__ = ["ROUTES", "admin_app"]
