"""Small asyncio helpers for loops that wait on several things at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_any(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Return as soon as one of ``events`` is set, or when ``timeout`` seconds have passed."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def setter(event: asyncio.Event) -> Callable[[object], None]:
    """A callback (e.g. asyncpg's termination listener) that sets ``event``."""
    return lambda _arg: event.set()
