"""The dispatcher's lifecycle: one durable work-queue consumer shared by every replica."""

from __future__ import annotations

import asyncio

from cairn_common.lag import sample_consumer_lag
from cairn_common.runtime import ServiceContext, consume
from cairn_dispatcher.handlers import Dispatcher
from cairn_dispatcher.lookup import Lookup
from cairn_dispatcher.providers.registry import Providers
from cairn_dispatcher.rates import SendRates
from cairn_dispatcher.repo import DeliveryLedger, Documents, Instances, Suppressions
from cairn_dispatcher.results import ResultPublisher
from cairn_dispatcher.settings import Settings


async def run(ctx: ServiceContext[Settings]) -> None:
    providers = Providers(ctx.settings)
    dispatcher = Dispatcher(
        ctx.settings,
        ctx.js,
        ctx.topology,
        DeliveryLedger(ctx.pool),
        Instances(ctx.pool),
        Suppressions(ctx.pool),
        Lookup(Documents(ctx.pool), ttl=ctx.settings.documents_ttl_seconds),
        providers,
        ResultPublisher(ctx.nc, ctx.topology, ctx.settings.partitions),
        SendRates(ctx.pool),
    )
    durable = ctx.topology.dispatcher_consumer
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(
                sample_consumer_lag(
                    ctx.js,
                    ctx.topology.deliveries_stream,
                    lambda: {durable: durable},
                    ctx.stopping,
                    interval=ctx.settings.metrics_sample_seconds,
                ),
                name="consumer-lag",
            )
            tg.create_task(dispatcher.keep_claims(ctx.stopping), name="delivery-claims")
            await consume(ctx, durable, dispatcher)
    finally:
        await providers.close()
