"""Publish-time checks: what a journey needs from the rest of the world to go live."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

import msgspec

from cairn_journey.model import Channel, Destination, Journey, Template, Trigger
from cairn_journey.problems import Problem


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Limits from ARCHITECTURE §2 (defaults); reject above them with a clear error."""

    event_bytes: int = 32 * 1024
    batch_bytes: int = 500 * 1024
    batch_events: int = 2500
    steps_per_journey: int = 50
    max_wait: timedelta = timedelta(days=365)
    instance_lifetime: timedelta = timedelta(days=365)
    instances_per_profile: int = 25


def check_publishable(
    journey: Journey,
    *,
    templates: Mapping[str, Template],
    triggers: Mapping[str, Trigger],
    channels: Mapping[str, Channel],
    destinations: Mapping[str, Destination],
    ready_templates: set[str],
    limits: Limits,
) -> list[Problem]:
    """Every problem that stops ``journey`` from being published (empty = publishable)."""
    raise NotImplementedError
