"""A real service built on cairn_common.runtime, for lifecycle tests: it records how many times it
handled each profile input, slowly, so a test can stop it with work in flight."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from cairn_common.bus import provision
from cairn_common.consume import ACK, Incoming, Outcome, one_at_a_time
from cairn_common.messages import Event
from cairn_common.runtime import ServiceContext, consume, run_service
from cairn_common.settings import CommonSettings
from cairn_common.topology import ConsumerSpec, Topology


class Settings(CommonSettings, frozen=True, kw_only=True):
    handle_delay_seconds: float = 0.1


async def work(ctx: ServiceContext[Settings]) -> None:
    await ctx.pool.execute(
        "CREATE TABLE IF NOT EXISTS handled (message_id text PRIMARY KEY, times int NOT NULL)"
    )

    async def handle(item: Incoming) -> Outcome:
        assert isinstance(item.message, Event)
        await asyncio.sleep(ctx.settings.handle_delay_seconds)
        await ctx.pool.execute(
            "INSERT INTO handled VALUES ($1, 1) "
            "ON CONFLICT (message_id) DO UPDATE SET times = handled.times + 1",
            item.message.message_id,
        )
        return ACK

    spec = counting_consumer(ctx.topology)
    await provision(ctx.js, [], [spec])
    await consume(ctx, spec, one_at_a_time(handle, "counting"))


def counting_consumer(topology: Topology) -> ConsumerSpec:
    """A durable over every profile input, as a service of its own would declare it."""
    return ConsumerSpec(
        stream=topology.inputs_stream,
        durable="counting",
        filter_subject=None,
        max_deliver=8,
        ack_wait=timedelta(seconds=30),
        backoff=(timedelta(seconds=1),),
    )


if __name__ == "__main__":
    run_service("counting-worker", Settings, work)
