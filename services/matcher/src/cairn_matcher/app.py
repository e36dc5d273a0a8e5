"""The matcher's lifecycle: consume every profile input of the topology until told to stop.

The journey engine arrives with the Matcher issue; today the matcher keeps profile traits current
(identify calls), which the rest of the system reads as ``profile.<trait>``.
"""

from __future__ import annotations

from cairn_common.consume import one_at_a_time
from cairn_common.runtime import ServiceContext, consume
from cairn_matcher.handlers import ProfileInputs
from cairn_matcher.settings import Settings


async def run(ctx: ServiceContext[Settings]) -> None:
    handler = ProfileInputs(ctx.pool)
    await consume(ctx, ctx.topology.matcher_consumer, one_at_a_time(handler, "matcher"))
