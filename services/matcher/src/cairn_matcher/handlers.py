"""What the matcher does with each profile input."""

from __future__ import annotations

import asyncpg
import structlog

from cairn_common.consume import ACK, Incoming, Outcome, Reject
from cairn_common.messages import DeliveryResult, Event, TimerFired
from cairn_matcher import repo

log = structlog.get_logger(__name__)


class ProfileInputs:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def __call__(self, item: Incoming) -> Outcome:
        match item.message:
            case Event(type="identify", profile_id=profile_id, traits=traits) if traits:
                await repo.merge_traits(self._pool, profile_id, traits)
                return ACK
            case Event() | TimerFired() | DeliveryResult():
                return ACK
            case other:
                return Reject(f"matcher does not handle {type(other).__name__} messages")
