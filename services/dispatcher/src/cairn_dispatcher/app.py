"""The dispatcher's lifecycle: one durable work-queue consumer shared by every replica."""

from __future__ import annotations

from cairn_common.runtime import ServiceContext, consume
from cairn_dispatcher.handlers import Dispatcher
from cairn_dispatcher.lookup import Lookup
from cairn_dispatcher.providers.registry import Providers
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
    )
    try:
        await consume(ctx, ctx.topology.dispatcher_consumer, dispatcher)
    finally:
        await providers.close()
