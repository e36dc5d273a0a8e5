"""The matcher's lifecycle.

It loads the published journeys, joins the partition leases, and keeps one worker per partition it
owns. Alongside run the lease renewal, the journey reload watcher and the outbox relay. On SIGTERM
the workers finish their batch in flight, then the leases are handed back at once so another
replica takes over without waiting for them to expire.
"""

from __future__ import annotations

import asyncio
import zlib

from prometheus_client import Gauge

from cairn_common.failures import is_transient
from cairn_common.lag import sample_consumer_lag
from cairn_common.runtime import ServiceContext
from cairn_matcher.engine import Engine
from cairn_matcher.experiments import decide_regularly
from cairn_matcher.housekeeping import InputTrimmer, prune_regularly, sample_instances
from cairn_matcher.journeys import JourneyCatalogue
from cairn_matcher.leases import PartitionLeases
from cairn_matcher.outbox import Outbox, payload_bound
from cairn_matcher.partitions import PartitionSupervisor
from cairn_matcher.settings import Settings

STALLED = Gauge(
    "cairn_matcher_stalled_partitions",
    "Partitions whose batch has not committed for CAIRN_STALLED_AFTER_SECONDS or more",
)


async def run(ctx: ServiceContext[Settings]) -> None:
    s = ctx.settings
    journeys = JourneyCatalogue(ctx.pool, s.database_url)
    await journeys.load()
    leases = PartitionLeases(
        ctx.pool, s.replica_id, s.partitions, ttl=s.lease_ttl_seconds, renew=s.lease_renew_seconds
    )
    outbox = Outbox(
        ctx.js,
        ctx.pool,
        relay_after=s.outbox_relay_after_seconds,
        topology=ctx.topology,
        partitions=s.partitions,
        max_bytes=payload_bound(ctx.nc.max_payload),
    )
    engine = Engine(
        ctx.pool,
        leases,
        journeys,
        ctx.topology,
        outbox=outbox,
        max_cached_profiles=s.max_cached_profiles,
        notify_within=s.timer_notify_within_seconds,
        committers=s.committers,
        max_group=s.max_commit_inputs,
        traits_budget=s.max_profile_traits_bytes,
        first_shard=zlib.crc32(s.replica_id.encode()),
    )
    supervisor = PartitionSupervisor(ctx, leases, engine)
    STALLED.set_function(lambda: len(supervisor.stalled(s.stalled_after_seconds)))

    async def no_stalled_partition() -> list[str]:
        return [
            f"partition {p} has not committed for {seconds:.0f} s (see the matcher's log)"
            for p, seconds in supervisor.stalled(s.stalled_after_seconds).items()
        ]

    ctx.ready_checks.append(no_stalled_partition)
    background = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(leases.run(background), name="leases")
            tg.create_task(journeys.watch(background, s.journeys_reload_seconds), name="journeys")
            tg.create_task(outbox.relay(background), name="outbox-relay")
            tg.create_task(outbox.delete_published(background), name="outbox-deletes")
            tg.create_task(engine.run(background), name="group-commit")
            tg.create_task(
                sample_consumer_lag(
                    ctx.js,
                    ctx.topology.inputs_stream,
                    supervisor.consumers,
                    background,
                    interval=s.metrics_sample_seconds,
                ),
                name="consumer-lag",
            )
            tg.create_task(
                sample_instances(ctx.pool, leases, background, interval=s.instances_gauge_seconds),
                name="instances-gauge",
            )
            tg.create_task(
                prune_regularly(
                    ctx.pool, leases, background, days=s.delivery_events_retention_days
                ),
                name="prune-delivery-events",
            )
            tg.create_task(
                decide_regularly(
                    ctx.pool, leases, journeys, background, interval=s.winners_seconds
                ),
                name="split-winners",
            )
            tg.create_task(
                InputTrimmer(ctx.js, ctx.pool, ctx.topology, leases).run(
                    background, interval=s.inputs_trim_seconds
                ),
                name="trim-inputs",
            )
            await supervisor.run()  # returns once stopping and every worker has finished
            background.set()
    finally:
        background.set()
        try:
            await leases.release_all()
        except Exception as exc:  # the leases expire by themselves
            if not is_transient(exc):
                raise
