"""The published journeys the matcher runs, reloaded on publish or stop without a restart.

The control plane sends ``NOTIFY cairn_journeys`` in the transaction that publishes or stops a
journey; the matcher LISTENs on a connection of its own and reloads. A periodic reload covers a
missed notification (e.g. across a database restart).

Every published version is kept, not only the live one: instances finish on the version they
started on. Only a journey's live version accepts new entries, and none once it is stopped. A
stored version that no longer parses (it was valid when published, so this means a bug or a
hand edit) is left out with an error in the log; the other journeys keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
import structlog
from prometheus_client import Gauge

from cairn_common.failures import describe, is_transient
from cairn_common.waiting import setter, wait_any
from cairn_journey.catalogue import Catalogue
from cairn_journey.documents import parse_document
from cairn_journey.model import Journey
from cairn_matcher import repo

log = structlog.get_logger(__name__)

LIVE_JOURNEYS = Gauge("cairn_matcher_live_journeys", "Journeys taking new entries, as last loaded")
LOADED_VERSIONS = Gauge("cairn_matcher_loaded_versions", "Published journey versions loaded")
DECIDED_SPLITS = Gauge(
    "cairn_matcher_decided_splits", "Split experiments with a recorded winner, as last loaded"
)

CHANNEL = "cairn_journeys"


def build_catalogue(rows: Sequence[Any], decided: Sequence[Any] = ()) -> Catalogue:
    """``rows``: the published versions; ``decided``: the experiments whose winner is known."""
    versions: dict[tuple[str, int], Journey] = {}
    live: dict[str, int] = {}
    for r in rows:
        name, version = r["journey"], r["version"]
        try:
            doc = parse_document(msgspec.json.decode(r["definition"]), source=f"{name} v{version}")
        except Exception as exc:  # any failure to parse leaves this version out, never the rest
            log.error("published journey does not load", journey=name, version=version,
                      error=str(exc))  # fmt: skip
            continue
        if not isinstance(doc, Journey):
            log.error("published document is not a Journey", journey=name, version=version)
            continue
        versions[(name, version)] = doc
        if r["state"] == "live" and r["live_version"] == version:
            live[name] = version
    winners: dict[tuple[str, int], dict[str, int]] = {}
    for d in decided:
        winners.setdefault((d["journey"], d["version"]), {})[d["step_id"]] = d["path"]
    return Catalogue(versions, live, winners=winners)


class JourneyCatalogue:
    """Holds the current ``Catalogue``; ``current`` is swapped whole on each reload."""

    def __init__(self, pool: asyncpg.Pool, database_url: str) -> None:
        self._pool = pool
        self._database_url = database_url
        self.current = Catalogue()
        self.published: dict[tuple[str, int], datetime] = {}
        """When each loaded version was published (an experiment's ``after`` counts from it)."""
        self._reload = asyncio.Event()

    async def load(self) -> None:
        async with self._pool.acquire() as conn:
            rows = await repo.published_journeys(conn)
            decided = await repo.split_winners(conn)
        self.current = build_catalogue(rows, decided)
        self.published = {(r["journey"], r["version"]): r["published_at"] for r in rows}
        LIVE_JOURNEYS.set(len(self.current.live))
        LOADED_VERSIONS.set(len(self.current.versions))
        DECIDED_SPLITS.set(sum(len(c.winners) for c in self.current.compiled.values()))
        log.info("journeys loaded", versions=len(self.current.versions),
                 live=sorted(self.current.live))  # fmt: skip

    async def watch(self, stop: asyncio.Event, every: float) -> None:
        """Reload on every notification, and every ``every`` seconds in case one was missed."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._listen(stop))
            while not stop.is_set():
                await wait_any(stop, self._reload, timeout=every)
                if stop.is_set():
                    break
                self._reload.clear()
                try:
                    await self.load()
                except Exception as exc:  # the journeys loaded last keep running meanwhile
                    if not is_transient(exc):
                        log.exception("reloading journeys failed; will retry")
                    else:
                        log.warning("reloading journeys failed; will retry", error=describe(exc))

    async def _listen(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self._database_url)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("cannot LISTEN for journey changes yet", error=describe(exc))
                await wait_any(stop, timeout=1.0)
                continue
            try:
                conn.add_termination_listener(setter(lost))
                await conn.add_listener(CHANNEL, lambda *_: self._reload.set())
                self._reload.set()  # anything published while we were not listening
                await wait_any(stop, lost)
            finally:
                with contextlib.suppress(Exception):  # closing a lost connection: nothing to do
                    await asyncio.wait_for(conn.close(), timeout=2)
