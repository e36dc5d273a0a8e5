"""Stopping a journey: no new entries, and running instances either drain or exit at once.

``drain``: the journey takes no new entries; instances already running finish on their version.
``exit_all``: as drain, and every active instance exits now. The exit travels as an
``ExitInstances`` input into each affected profile's partition, so it is ordered with that
profile's other inputs (the matcher is the only writer of instance state). The stop is committed
first; the exits are published after the commit with a deterministic ``Nats-Msg-Id`` (journey,
stop time, profile), so running ``stop --exit-all`` again after a failure re-sends safely.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import asyncpg
import msgspec
import structlog
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext

from cairn_common.failures import PublishFailed
from cairn_common.messages import ExitInstances, encode
from cairn_common.partitioning import partition_for
from cairn_common.publishing import Outgoing, publish_batch
from cairn_common.topology import Topology
from cairn_control.errors import Conflict, NotFound, Unavailable
from cairn_control.store import audit, notify_journeys

log = structlog.get_logger(__name__)

StopMode = Literal["drain", "exit_all"]
PUBLISH_BATCH = 1000


class Stopped(msgspec.Struct, frozen=True, kw_only=True):
    journey: str
    mode: StopMode
    stopped_at: datetime
    profiles_exited: int
    """Profiles sent an ``ExitInstances`` (0 for ``drain``)."""
    message: str


async def stop_journey(
    pool: asyncpg.Pool,
    js: JetStreamContext,
    topology: Topology,
    name: str,
    mode: StopMode,
    *,
    partitions: int,
) -> Stopped:
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT state, stop_mode, stopped_at FROM journeys WHERE name = $1 FOR UPDATE", name
        )
        if row is None:
            raise NotFound(f"journey {name!r} does not exist")
        if row["state"] == "draft":
            raise Conflict(f"journey {name!r} was never published; there is nothing to stop")
        if row["state"] == "stopped" and (row["stop_mode"] == mode or mode == "drain"):
            stopped_at: datetime = row["stopped_at"]
            if mode == "drain":
                return Stopped(
                    journey=name,
                    mode=row["stop_mode"],
                    stopped_at=stopped_at,
                    profiles_exited=0,
                    message=f"{name} was already stopped ({row['stop_mode']})",
                )
        else:
            stopped_at = await conn.fetchval(
                "UPDATE journeys SET state = 'stopped', stop_mode = $2, stopped_at = now(), "
                "updated_at = now() WHERE name = $1 RETURNING stopped_at",
                name,
                mode,
            )
            await audit(conn, "stop", "Journey", name, mode=mode)
            await notify_journeys(conn, journey=name, action="stop", mode=mode)
    profiles = await _profiles_with_active_instances(pool, name) if mode == "exit_all" else []
    try:
        await _publish_exits(js, topology, name, stopped_at, profiles, partitions)
    except (PublishFailed, NatsError, TimeoutError) as exc:
        raise Unavailable(
            f"{name} is stopped (no new entries), but not every running instance was told to "
            f"exit: {exc}. Run the same stop --exit-all again; profiles already told are not "
            "told twice"
        ) from None
    log.info("journey stopped", journey=name, mode=mode, profiles_exited=len(profiles))
    if mode == "drain":
        message = f"{name} stopped: no new entries; running instances finish their journey"
    else:
        message = (
            f"{name} stopped: no new entries; "
            f"active instances of {len(profiles)} profile(s) exit now"
        )
    return Stopped(
        journey=name,
        mode=mode,
        stopped_at=stopped_at,
        profiles_exited=len(profiles),
        message=message,
    )


async def _profiles_with_active_instances(pool: asyncpg.Pool, name: str) -> list[str]:
    try:
        rows = await pool.fetch(
            "SELECT DISTINCT profile_id FROM journey_instances "
            "WHERE journey = $1 AND status = 'active' ORDER BY profile_id",
            name,
        )
    except asyncpg.UndefinedTableError:
        return []  # no matcher has ever run against this database: no instance can exist
    return [r["profile_id"] for r in rows]


async def _publish_exits(
    js: JetStreamContext,
    topology: Topology,
    name: str,
    stopped_at: datetime,
    profiles: list[str],
    partitions: int,
) -> None:
    """Publish in batches (every publish out before the acknowledgements are awaited)."""
    stamp = stopped_at.isoformat()
    for start in range(0, len(profiles), PUBLISH_BATCH):
        batch = []
        for profile_id in profiles[start : start + PUBLISH_BATCH]:
            partition = partition_for(profile_id, partitions)
            message = ExitInstances(
                profile_id=profile_id, partition=partition, journey=name, reason="stopped"
            )
            batch.append(
                Outgoing(
                    topology.input_subject(partition, "control"),
                    encode(message),
                    f"exit-all:{name}:{stamp}:{profile_id}",
                )
            )
        await publish_batch(js, batch, timeout=10.0)  # a batch of thousands, from a request
