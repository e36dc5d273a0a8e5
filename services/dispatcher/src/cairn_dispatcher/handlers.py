"""What the dispatcher does with each delivery request.

Channels arrive with the Dispatcher issue. Until a channel is configured, a request cannot succeed,
so it goes to the dead-letter stream with that reason rather than being dropped or retried forever.
"""

from __future__ import annotations

from cairn_common.consume import Incoming, Outcome, Reject
from cairn_common.messages import DeliveryRequested


class DeliveryRequests:
    async def __call__(self, item: Incoming) -> Outcome:
        match item.message:
            case DeliveryRequested(channel=channel, destination=destination):
                target = channel or destination or "nothing"
                return Reject(f"no channel or destination is configured for {target!r}")
            case other:
                return Reject(f"dispatcher does not handle {type(other).__name__} messages")
