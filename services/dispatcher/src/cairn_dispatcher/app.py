"""The dispatcher's lifecycle: one durable work-queue consumer shared by every replica."""

from __future__ import annotations

from cairn_common.consume import one_at_a_time
from cairn_common.runtime import ServiceContext, consume
from cairn_dispatcher.handlers import DeliveryRequests
from cairn_dispatcher.settings import Settings


async def run(ctx: ServiceContext[Settings]) -> None:
    handler = DeliveryRequests()
    await consume(ctx, ctx.topology.dispatcher_consumer, one_at_a_time(handler, "dispatcher"))
